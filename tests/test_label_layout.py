"""spine_seg.label_layout: exact conversion between R x C x K masks and class maps, layout detection."""

from __future__ import annotations

import numpy as np
import pytest

from spine_seg import phantom
from spine_seg.label_layout import (
    LAYOUTS,
    check_layout,
    detect_layout,
    from_class_map,
    num_structures,
    structure_slice,
    to_class_map,
)
from spine_seg.phantom import make_phantom


def class_map_for(layout: str, shape: tuple[int, int] = (70, 40), seed: int = 0) -> np.ndarray:
    return make_phantom(shape, seed=seed, num_structures=7 if layout == "one-hot" else 6)[1]


def test_phantom_reuses_from_class_map() -> None:
    assert phantom.mask_from_class_map is from_class_map


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_bit_for_bit(layout: str, seed: int) -> None:
    class_map = class_map_for(layout, seed=seed)
    assert class_map.max() == num_structures(layout, 7)  # every structure is present
    mask = from_class_map(class_map, layout, 7)
    assert mask.dtype == np.uint8 and mask.shape == (70, 40, 7)
    assert set(np.unique(mask)) == {0, 1}
    assert check_layout(mask, layout) is None
    assert detect_layout(mask) == layout
    back = to_class_map(mask, detect_layout(mask))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, class_map)
    np.testing.assert_array_equal(from_class_map(back, layout, 7), mask)


def test_layout_channel_semantics() -> None:
    class_map = class_map_for("background-last")
    background = class_map == 0
    np.testing.assert_array_equal(from_class_map(class_map, "background-last", 7)[..., 6], background)
    np.testing.assert_array_equal(from_class_map(class_map, "background-first", 7)[..., 0], background)
    np.testing.assert_array_equal(from_class_map(class_map, "union-last", 7)[..., 6], ~background)
    np.testing.assert_array_equal(from_class_map(class_map, "background-last", 7)[..., 0], class_map == 1)
    np.testing.assert_array_equal(from_class_map(class_map, "background-first", 7)[..., 1], class_map == 1)
    one_hot = from_class_map(class_map, "one-hot", 7)
    assert not one_hot[background].any()  # background pixels have no channel set


@pytest.mark.parametrize(
    ("layout", "expected"),
    [("background-last", (0, 6)), ("union-last", (0, 6)), ("background-first", (1, 7)), ("one-hot", (0, 7))],
)
def test_structure_slice(layout: str, expected: tuple[int, int]) -> None:
    s = structure_slice(layout, 7)
    assert (s.start, s.stop) == expected
    assert num_structures(layout, 7) == expected[1] - expected[0]


def test_unknown_layout() -> None:
    with pytest.raises(ValueError, match="unknown label layout 'rows-first'"):
        structure_slice("rows-first", 7)


def test_empty_structure_round_trips() -> None:
    class_map = class_map_for("background-last")
    class_map[class_map == 3] = 0
    mask = from_class_map(class_map, "background-last", 7)
    assert not mask[..., 2].any()
    assert detect_layout(mask) == "background-last"
    np.testing.assert_array_equal(to_class_map(mask, "background-last"), class_map)


def test_background_first_is_not_mistaken_for_background_last() -> None:
    """A partition fits both 'background' layouts; the larger end channel is the background."""
    class_map = class_map_for("background-first")
    first = from_class_map(class_map, "background-first", 7)
    assert check_layout(first, "background-last") is None  # ambiguous on the complement rule alone
    assert detect_layout(first) == "background-first"
    assert detect_layout(from_class_map(class_map, "background-last", 7)) == "background-last"


def test_wrong_layout_reasons() -> None:
    class_map = class_map_for("background-last")
    union = from_class_map(class_map, "union-last", 7)
    assert "not the complement" in check_layout(union, "background-last")
    background_last = from_class_map(class_map, "background-last", 7)
    assert "not the union" in check_layout(background_last, "union-last")


def test_overlap_fits_no_layout() -> None:
    mask = from_class_map(class_map_for("background-last"), "background-last", 7)
    mask[..., 1] |= mask[..., 0]  # structures 1 and 2 overlap
    reason = check_layout(mask, "background-last")
    assert reason is not None and "overlap" in reason
    overlap = int(mask[..., 0].sum())
    assert str(overlap) in reason
    with pytest.raises(ValueError) as info:
        detect_layout(mask)
    for layout in LAYOUTS:
        assert layout in str(info.value)


def test_union_last_beats_one_hot() -> None:
    """A union-last mask also has non-overlapping structures, but its last channel is the union."""
    mask = from_class_map(class_map_for("union-last"), "union-last", 7)
    assert detect_layout(mask) == "union-last"
    assert check_layout(mask, "one-hot") is not None  # the union channel overlaps every structure


# --- the phantom class maps used throughout the tests ------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 48), (70, 40), (256, 160), (160, 256), (1200, 700)])
def test_phantom_bodies_run_top_to_bottom(shape: tuple[int, int]) -> None:
    image, class_map = make_phantom(shape, seed=3)
    assert image.shape == class_map.shape == shape
    assert image.dtype == class_map.dtype == np.uint8
    assert set(np.unique(class_map)) == set(range(7))
    rows = [np.nonzero(class_map == k)[0] for k in range(1, 7)]
    centres = [r.mean() for r in rows]
    assert centres == sorted(centres) and len(set(centres)) == 6
    for upper, lower in zip(rows, rows[1:], strict=False):
        assert upper.max() < lower.min()  # separated by a gap
    cols = np.nonzero(class_map)[1]
    assert abs(cols.mean() - shape[1] / 2) < 0.1 * shape[1]  # down the middle
    assert image[class_map > 0].mean() > image[class_map == 0].mean() + 40  # bright bodies
    if min(shape) >= 160:
        areas = np.bincount(class_map.ravel())[1:]
        assert (np.diff(areas) > 0).all()  # each a bit larger going down


def test_phantom_is_deterministic() -> None:
    a, b = make_phantom((64, 48), seed=5), make_phantom((64, 48), seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], make_phantom((64, 48), seed=6)[0])


def test_phantom_large_is_fast() -> None:
    """Under 1 s of CPU time at 3000 x 2500 (CPU time, so other busy processes do not make it flaky)."""
    import time

    best = float("inf")
    for _ in range(2):
        start = time.process_time()
        _, class_map = make_phantom((3000, 2500), seed=1)
        best = min(best, time.process_time() - start)
    assert class_map.max() == 6
    assert best < 1.0, f"make_phantom(3000 x 2500) took {best:.2f} s of CPU time"


def test_phantom_too_small() -> None:
    with pytest.raises(ValueError, match="too small"):
        make_phantom((30, 20))
