"""Stage 3 (bundle/scripts/vertebra_windows.py): windows cut and pasted back, training samples and their
augmentation, refinement that keeps each vertebra's name, and the ONNX path's use of the window geometry."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from spine_seg import onnx_predict
from spine_seg.evaluation_table import dice
from spine_seg.predict import DEFAULT_BUNDLE

sys.path.insert(0, str(DEFAULT_BUNDLE))
from scripts.level_sizes import read_level_sizes, write_level_sizes  # noqa: E402
from scripts.vertebra_geometry import (  # noqa: E402
    GAP_RANGE,
    MIN_AREA_RATIO,
    level_proportions,
    level_sized_windows,
    mend_end_windows,
    mend_middle_windows,
    refine_windows,
)
from scripts.vertebra_windows import (  # noqa: E402
    RefineVertebraed,
    VertebraWindowsd,
    cut_window,
    paste_best,
    uncut_window,
    vertebra_windows,
    window_overlap,
)


def _spine() -> np.ndarray:
    """Three boxes, the last at the image's bottom-right corner so that its window leaves the image."""
    label = np.zeros((300, 140), np.uint8)
    label[40:80, 30:90], label[84:126, 34:96], label[270:300, 100:140] = 1, 2, 3
    return label


def test_windows_cut_and_paste_back() -> None:
    label = _spine()
    found = vertebra_windows(label, 3, 1.6)
    assert found[1] == (60.0, 60.0, 96.0)  # box centre, 1.6 x its larger side (60 columns)
    for k, window in found.items():
        patch = cut_window((label == k).astype(np.float32), window, 32, mode="nearest-exact")
        assert patch.shape == (1, 32, 32)
        back = uncut_window(patch[0], window, label.shape)
        assert dice(paste_best([(k, back, window)], label.shape, 0.5) == k, label == k) > 0.95


def _chain(rows: dict[int, int], shape: tuple[int, int] = (420, 200), height: int = 30) -> np.ndarray:
    """Vertebra k as a ``height`` x 50 box whose top row is ``rows[k]``, its columns drifting 4 px per level (a
    slight curve), so that a moved window has to follow the chain in both directions."""
    label = np.zeros(shape, np.uint8)
    for k, top in rows.items():
        label[top : top + height, 60 + 4 * k : 110 + 4 * k] = k
    return label


REGULAR = {k: 20 + 40 * k for k in range(1, 7)}  # centres 40 px apart, rows 75 (1) to 275 (6)


def test_a_regular_chain_keeps_its_windows() -> None:
    label = _chain(REGULAR)
    found = vertebra_windows(label, 6, 1.6)
    assert mend_end_windows(label, 6, found) == found
    short = _chain({k: REGULAR[k] for k in (1, 2, 3)})  # too few neighbours to judge an end by
    assert mend_end_windows(short, 6, vertebra_windows(short, 6, 1.6)) == vertebra_windows(short, 6, 1.6)


def _two_on_one(label: np.ndarray) -> np.ndarray:
    """Label 1 drawn over the top 12 rows of body 2 instead of on body 1."""
    out = np.where(label == 1, 0, label).astype(np.uint8)
    out[REGULAR[2] : REGULAR[2] + 12][out[REGULAR[2] : REGULAR[2] + 12] == 2] = 1
    return out


@pytest.mark.parametrize(
    ("case", "label"),
    [
        ("a body skipped above the chain", _chain({**REGULAR, 1: REGULAR[1] - 40})),  # gap 2 x the step
        ("two labels on one body", _two_on_one(_chain(REGULAR))),  # gap 0.5 x the step
        ("missing", _chain({k: r for k, r in REGULAR.items() if k != 1})),
    ],
)
def test_an_end_vertebra_that_breaks_the_chain_is_moved_next_to_its_neighbour(case: str, label: np.ndarray) -> None:
    found = vertebra_windows(label, 6, 1.6)
    mended = mend_end_windows(label, 6, found)
    assert list(mended) == [1, 2, 3, 4, 5, 6], "label order, also for an end that was missing"
    step = np.subtract(found[2][:2], found[3][:2])
    assert mended[1] == pytest.approx((*(np.add(found[2][:2], step)), found[2][2])), "one step on, neighbour's side"
    true_centre = vertebra_windows(_chain(REGULAR), 6, 1.6)[1][:2]
    # within half a step of the body it belongs on (the squeezed neighbour of "two labels on one body" moves it 0.35)
    assert np.hypot(*np.subtract(mended[1][:2], true_centre)) < 0.5 * np.hypot(*step), case
    assert {k: mended[k] for k in range(2, 7)} == {k: found[k] for k in range(2, 7)}


def test_a_squeezed_end_is_moved_and_the_bottom_end_is_mended_too() -> None:
    label = _chain(REGULAR)
    label[label == 6] = 0
    label[REGULAR[6] + 40 : REGULAR[6] + 46, 84:134] = 6  # a sliver a step too low: area and gap both off
    squeezed = float((label == 6).sum()) / float((label == 5).sum())
    assert squeezed < MIN_AREA_RATIO
    mended = mend_end_windows(label, 6, vertebra_windows(label, 6, 1.6))
    assert mended[6][:2] == pytest.approx(vertebra_windows(_chain(REGULAR), 6, 1.6)[6][:2], abs=1.0)


def test_an_end_is_not_judged_against_an_irregular_chain() -> None:
    """Where the end's neighbours are themselves unevenly spaced (a step outside GAP_RANGE of the next), the chain
    gives no place to move the end to: it keeps its window, however far off it lies."""
    rows = {**REGULAR, 1: REGULAR[1] - 40, 2: REGULAR[2] - 30}  # steps 70 and 40: 1.75 x
    assert not GAP_RANGE[0] <= 70 / 40 <= GAP_RANGE[1]
    label = _chain(rows)
    found = vertebra_windows(label, 6, 1.6)
    assert mend_end_windows(label, 6, found)[1] == found[1]


def test_a_chain_with_a_body_skipped_in_its_middle_judges_neither_end() -> None:
    """A gap in the middle of the chain makes its steps uneven, so its median step is no measure of where an end
    belongs: the last vertebra, drawn half a step below its neighbour, keeps its window."""
    rows = {k: r + (40 if k >= 3 else 0) for k, r in REGULAR.items()}  # a body skipped between 2 and 3
    rows[6] = rows[5] + 20
    label = _chain(rows)
    found = vertebra_windows(label, 6, 1.6)
    assert mend_end_windows(label, 6, found) == found


def _squeezed(label: np.ndarray, k: int, rows: int = 8) -> np.ndarray:
    """Vertebra ``k`` of ``label`` cut to its top ``rows`` rows: a sliver under MIN_AREA_RATIO of the others."""
    out = label.copy()
    out[(out == k) & (np.arange(out.shape[0])[:, None] >= REGULAR[k] + rows)] = 0
    return out


@pytest.mark.parametrize("case", ["squeezed", "missing"])
def test_a_middle_vertebra_between_neighbours_a_body_apart_is_moved_to_their_midpoint(case: str) -> None:
    regular = _chain(REGULAR)
    label = _squeezed(regular, 3) if case == "squeezed" else np.where(regular == 3, 0, regular).astype(np.uint8)
    assert float((label == 3).sum()) < MIN_AREA_RATIO * float((label == 2).sum())
    found = vertebra_windows(label, 6, 1.6)
    mended = mend_middle_windows(label, 6, found)
    assert list(mended) == [1, 2, 3, 4, 5, 6], "label order, also for a vertebra that was missing"
    midpoint = np.add(found[2][:2], found[4][:2]) / 2
    assert mended[3] == pytest.approx((*midpoint, (found[2][2] + found[4][2]) / 2)), "midpoint, neighbours' side"
    assert mended[3] == pytest.approx(vertebra_windows(regular, 6, 1.6)[3], abs=1.0), "where the body is"
    assert {k: mended[k] for k in (1, 2, 4, 5, 6)} == {k: found[k] for k in (1, 2, 4, 5, 6)}


def test_a_middle_vertebra_is_left_alone_where_the_chain_gives_no_room_or_it_is_whole() -> None:
    regular = _chain(REGULAR)
    found = vertebra_windows(regular, 6, 1.6)
    assert mend_middle_windows(regular, 6, found) == found, "a regular chain"
    # neighbours one step apart (label 2 drawn on body 3's place too): no body between them to move 3 onto
    crowded = _squeezed(_chain({**REGULAR, 2: REGULAR[2] + 25, 4: REGULAR[4] - 25}), 3)
    found = vertebra_windows(crowded, 6, 1.6)
    assert mend_middle_windows(crowded, 6, found) == found
    # the end vertebrae are mend_end_windows' to judge, whatever their size
    ends = _squeezed(regular, 1)
    assert mend_middle_windows(ends, 6, vertebra_windows(ends, 6, 1.6)) == vertebra_windows(ends, 6, 1.6)


def _widening(widths: dict[int, int]) -> np.ndarray:
    """The regular chain with vertebra k ``widths[k]`` columns wide (30 rows tall), centred on column 100."""
    label = np.zeros((420, 200), np.uint8)
    for k, width in widths.items():
        label[REGULAR[k] : REGULAR[k] + 30, 100 - width // 2 : 100 - width // 2 + width] = k
    return label


LEVEL_WIDTHS = {1: 40, 2: 44, 3: 48, 4: 52, 5: 56, 6: 60}


def test_level_proportions_are_each_window_over_the_case_s_median() -> None:
    label = _widening(LEVEL_WIDTHS)
    sizes = level_proportions(label, 6)
    assert sizes == pytest.approx(np.array(list(LEVEL_WIDTHS.values())) / 50)  # median of 48 and 52
    assert level_proportions(np.where(label == 4, 0, label), 6) is None, "only labels holding every level count"


def test_level_sized_windows_take_the_case_s_scale_times_each_level_s_size() -> None:
    """A vertebra drawn too narrow (or missing) does not size its own window: the others set the case's scale."""
    sizes = np.array(list(LEVEL_WIDTHS.values())) / 50
    truth = vertebra_windows(_widening(LEVEL_WIDTHS), 6, 1.6)
    narrow = _widening({**LEVEL_WIDTHS, 3: 36})
    found = vertebra_windows(narrow, 6, 1.6)
    assert found[3][2] == pytest.approx(0.75 * truth[3][2])
    sized = level_sized_windows(found, sizes)
    assert np.array([sized[k] for k in range(1, 7)]) == pytest.approx(np.array([truth[k] for k in range(1, 7)])), \
        "every side back at its level's, centres kept"
    assert refine_windows(narrow, 6, 1.6, level_sizes=sizes) == sized
    bigger = level_sized_windows({k: (r, c, 2 * s) for k, (r, c, s) in found.items() if k != 2}, sizes)
    assert list(bigger) == [1, 3, 4, 5, 6], "no window is added"
    assert [bigger[k][2] for k in bigger] == pytest.approx([2 * truth[k][2] for k in bigger]), "the case's own scale"
    assert level_sized_windows({}, sizes) == {}


def test_level_sizes_are_measured_on_the_training_labels_and_read_beside_the_weights(
        tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    import nibabel as nib

    paths = []
    for i, widths in enumerate([LEVEL_WIDTHS, {k: 2 * w for k, w in LEVEL_WIDTHS.items()}, {1: 40, 2: 44}]):
        paths.append(tmp_path / f"{i}.nii.gz")
        nib.save(nib.Nifti1Image(_widening(widths), np.eye(4)), paths[-1])
    target = tmp_path / "models" / "refine_sizes.json"
    target.parent.mkdir()
    written = write_level_sizes(paths, 6, target)
    assert written == pytest.approx(np.array(list(LEVEL_WIDTHS.values())) / 50, abs=1e-4), "incomplete label left out"
    assert read_level_sizes(target) == written
    with caplog.at_level("WARNING"):
        assert write_level_sizes(paths[2:], 6, target) is None
        assert not target.exists(), "no sizes left from an earlier run"
        assert read_level_sizes(target) is None
    assert "none of the 1 training labels holds all 6 structures" in caplog.text
    assert "each window takes its own vertebra's size" in caplog.text
    target.write_text('{"level_sizes": [1.0, -2]}')
    with pytest.raises(ValueError, match="refine_sizes.json: not a level-sizes file"):
        read_level_sizes(target)


def test_the_bundle_s_chain_limits_are_the_anatomy_checks() -> None:
    from spine_seg import anatomy

    assert (MIN_AREA_RATIO, GAP_RANGE) == (anatomy.MIN_AREA_RATIO, anatomy.GAP_RANGE)


def test_a_window_wholly_outside_the_image_cuts_zeros_and_pastes_nothing() -> None:
    window = (-100.0, 500.0, 40.0)
    inside = window_overlap(window, (300, 140))[1]
    assert np.ones((300, 140))[inside].size == 0
    assert not cut_window(np.ones((300, 140), np.float32), window, 16).any()
    assert not paste_best([(1, uncut_window(torch.ones(16, 16), window, (300, 140)), window)], (300, 140), 0.5).any()


def test_pasting_gives_each_pixel_the_most_probable_window_over_the_threshold() -> None:
    """Two overlapping windows on a 6 x 8 image, the second cut by the right edge: where both reach, the more
    probable wins and a tie goes to the first; at or under the threshold, or outside both windows, background."""
    first, second = (2.0, 2.0, 4.0), (3.0, 7.0, 4.0)  # rows 0-3 x columns 0-3; rows 1-4 x columns 5-8 (8 cut)
    left = np.full((4, 4), 0.6, np.float32)
    left[:, 3] = 0.5  # column 3: at the threshold
    right = np.full((4, 4), 0.7, np.float32)
    out = paste_best([(4, left, first), (2, right, second)], (6, 8), 0.5)
    assert out.dtype == np.uint8 and out.shape == (6, 8)
    assert (out[0:4, 0:3] == 4).all() and not out[0:4, 3].any() and not out[4:, :5].any() and not out[:, 4].any()
    assert (out[1:5, 5:8] == 2).all() and not out[0, 5:].any() and not out[5].any()
    wide = (2.0, 4.0, 4.0)  # rows 0-3 x columns 2-5: overlaps the first window in columns 2-3
    tie = paste_best([(4, left, first), (3, np.full((4, 4), 0.6, np.float32), wide)], (6, 8), 0.5)
    assert (tie[0:4, 2] == 4).all() and (tie[0:4, 3] == 3).all() and (tie[0:4, 4:6] == 3).all()


def test_the_onnx_path_uses_the_bundle_s_window_geometry_without_torch() -> None:
    """``spine_seg.onnx_predict`` loads ``scripts/vertebra_geometry.py`` from the bundle (one copy of the window
    geometry), and imports with torch and MONAI unavailable, as a deployment with onnxruntime alone has them."""
    assert onnx_predict.refine_windows.__code__.co_filename == vertebra_windows.__code__.co_filename
    assert onnx_predict.window_overlap.__code__.co_filename == window_overlap.__code__.co_filename
    assert onnx_predict.paste_best.__code__.co_filename == paste_best.__code__.co_filename
    blocked = "import sys; sys.modules['torch'] = sys.modules['monai'] = None; import spine_seg.onnx_predict as m; " \
              "print(m.refine_windows(__import__('numpy').ones((4, 6), 'uint8'), 1, 2.0))"
    out = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "{1: (2.0, 3.0, 12.0)}"


def test_training_samples_are_one_window_per_vertebra() -> None:
    label = _spine()
    image = torch.as_tensor(label, dtype=torch.float32)[None] / 4
    samples = VertebraWindowsd(["image", "label"], num_classes=4, size=32)(
        {"image": image, "label": torch.as_tensor(label)[None]})
    assert [s["vertebra"] for s in samples] == [1, 2, 3]
    for s in samples:
        assert s["image"].shape == s["label"].shape == (1, 32, 32)
        centre = s["label"][0, 14:18, 14:18]
        assert (centre == 1).all(), "the window's own vertebra at its centre is class 1"
        assert set(s["label"].unique().tolist()) <= {0.0, 1.0, 2.0}
        assert s["image"][0, 14:18, 14:18].mean() == pytest.approx(s["vertebra"] / 4, abs=0.01)  # image aligned
    assert (samples[0]["label"] == 2).any(), "the neighbour below vertebra 1 is class 2"
    assert VertebraWindowsd(["image", "label"], num_classes=4)({"image": image, "label": torch.zeros(1, 300, 140)}) \
        == []


def test_training_augmentation_moves_image_and_target_together(bundle_config: Callable[..., ConfigParser]) -> None:
    """``train_refine.json``'s augmentation on cached windows (1.5 x the grid): the output is the grid's size,
    image and target stay aligned, the centre vertebra moves by at most ``refine_move`` of the window, and some
    windows are flipped left-right."""
    config = bundle_config("train.json", "train_refine.json")
    config["refine_size"] = 32
    augment = Compose(config.get_parsed_content("train#augmentation"))
    augment.set_random_state(0)
    big = int(round(32 * config["refine_cache"]))
    target = torch.zeros(1, big, big)
    target[:, 18:30, 20:28] = 1  # centred, 12 x 8
    target[:, 12:16, 30:38] = 2  # an asymmetric neighbour, so that a flip shows
    grid = torch.arange(32, dtype=torch.float32)
    offsets, right = [], []
    for _ in range(40):
        out = augment({"image": target.clamp(0, 1) * 0.9, "label": target.clone()})
        x, y = out["image"], out["label"]
        assert x.shape == y.shape == (1, 32, 32)
        inside = y == 1
        assert inside.any() and x[inside].mean() > 0.8 and x[y == 0].mean() < 0.2  # the image follows the target
        mask = inside[0].float()
        offsets.append(max(abs(float((mask.sum(1) * grid).sum() / mask.sum()) - 15.5),
                           abs(float((mask.sum(0) * grid).sum() / mask.sum()) - 15.5)))
        neighbour = (y[0] == 2).float()
        right.append(bool((neighbour.sum(0) * grid).sum() > neighbour.sum() * 16))
    assert max(offsets) > 1.5 and max(offsets) <= config["refine_move"] * 32 + 1.5
    assert 0 < sum(right) < len(right), "flipped in some windows, not in all"


class _SameValue(torch.nn.Module):
    """Class 1 wherever the window has the value at its centre: draws back a label map given as the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, :, x.shape[2] // 2, x.shape[3] // 2][..., None, None]
        same = 1 - 8 * (x - centre).abs()  # > 0 within half a label step (0.125) of the centre value
        return torch.cat([-same, same, torch.zeros_like(x)], 1)


def test_refinement_keeps_each_window_s_label() -> None:
    label = _spine()
    image = label.astype(np.float32) / 4
    refine = RefineVertebraed("pred", "original", _SameValue(), "unused.pt", num_classes=4, size=64)
    out = refine.refine(image, label)
    assert out.shape == label.shape and out.dtype == np.uint8
    for k in (1, 2, 3):
        assert dice(out == k, label == k) > 0.95
    swapped = np.choose(label, [0, 2, 1, 3]).astype(np.uint8)  # names 1 and 2 swapped: kept swapped
    assert dice(refine.refine(image, swapped) == 2, label == 1) > 0.95
    partial = np.where(label == 1, 0, label).astype(np.uint8)  # structure 1 not found: the others keep their names
    out = refine.refine(image, partial)
    assert not (out == 1).any() and dice(out == 2, label == 2) > 0.95 and dice(out == 3, label == 3) > 0.95
    assert not refine.refine(image, np.zeros_like(label)).any()


def test_refinement_redraws_an_end_vertebra_next_to_its_neighbour_when_mending() -> None:
    """The image holds the regular chain; the map puts label 1 a body too high (on an unlabelled one). Without
    mending, stage 3 redraws it where it is; with ``mend_ends`` its window moves next to label 2 and the label
    lands on the body there."""
    truth = _chain(REGULAR)
    image = (0.15 * truth).astype(np.float32)  # a value per body, 0.15 apart: _SameValue draws one body
    image[REGULAR[1] - 40 : REGULAR[1] - 10, 64:114] = 0.95  # the unlabelled body above, a value of its own
    skipped = _chain({**REGULAR, 1: REGULAR[1] - 40})
    skipped[truth == 1] = 0
    plain = RefineVertebraed("pred", "original", _SameValue(), "unused.pt", num_classes=7, size=64)
    mending = RefineVertebraed("pred", "original", _SameValue(), "unused.pt", num_classes=7, size=64, mend_ends=True)
    assert dice(plain.refine(image, skipped) == 1, truth == 1) == 0
    out = mending.refine(image, skipped)
    assert dice(out == 1, truth == 1) > 0.95
    assert all(dice(out == k, truth == k) > 0.95 for k in range(2, 7))


def test_refinement_redraws_a_squeezed_middle_vertebra_on_its_body_when_mending() -> None:
    """The map has label 3 as a sliver in the gap above its body; without ``mend_middle`` stage 3 redraws it where
    the sliver is (its window centred off the body) and misses the body; with it, the window sits between labels 2
    and 4 and the body is drawn whole."""
    truth = _chain(REGULAR)
    image = (0.15 * truth).astype(np.float32)
    squeezed = np.where(truth == 3, 0, truth).astype(np.uint8)
    squeezed[REGULAR[3] - 10 : REGULAR[3] - 2, 72:122] = 3  # 8 rows between bodies 2 and 3, body 3's columns
    plain = RefineVertebraed("pred", "original", _SameValue(), "unused.pt", num_classes=7, size=64, mend_ends=True)
    mending = RefineVertebraed("pred", "original", _SameValue(), "unused.pt", num_classes=7, size=64, mend_ends=True,
                               mend_middle=True)
    assert dice(plain.refine(image, squeezed) == 3, truth == 3) < 0.8
    out = mending.refine(image, squeezed)
    assert all(dice(out == k, truth == k) > 0.95 for k in range(1, 7))


def test_refinement_sizes_each_window_by_its_level_when_given_level_sizes() -> None:
    """Vertebra 3 drawn as a small part of its body in the map: its own window is too small to hold the body, the
    window sized by the case's scale and its level holds it whole. Sizes for another number of structures (weights
    of another data set) are refused."""
    truth = _widening(LEVEL_WIDTHS)
    image = (0.15 * truth).astype(np.float32)
    narrow = np.where(truth == 3, 0, truth).astype(np.uint8)
    rows, cols = np.indices(truth.shape)
    narrow[(truth == 3) & (np.abs(cols - 100) < 8) & (np.abs(rows - REGULAR[3] - 15) < 6)] = 3  # 16 x 12 px
    sizes = list(np.array(list(LEVEL_WIDTHS.values())) / 50)
    plain = RefineVertebraed("pred", "original", _SameValue(), "unused.pt", num_classes=7, size=64)
    sized = RefineVertebraed("pred", "original", _SameValue(), "unused.pt", num_classes=7, size=64, level_sizes=sizes)
    assert dice(plain.refine(image, narrow) == 3, truth == 3) < 0.9
    out = sized.refine(image, narrow)
    assert all(dice(out == k, truth == k) > 0.95 for k in range(1, 7))
    with pytest.raises(ValueError, match="give 5 sizes for 6 structures"):
        RefineVertebraed("pred", "original", _SameValue(), "unused.pt", num_classes=7, level_sizes=sizes[:5])


def test_refine_transform_loads_its_weights_and_keeps_the_map_s_metadata(tmp_path) -> None:
    label = _spine()
    image = torch.as_tensor(label, dtype=torch.float32)[None] * 100  # any intensity range: scaled inside
    pred = MetaTensor(torch.as_tensor(label)[None], meta={"filename_or_obj": "/x/case.nii.gz"})
    with pytest.raises(FileNotFoundError, match="missing.pt: no stage-3"):
        RefineVertebraed("pred", "original", _SameValue(), str(tmp_path / "missing.pt"), num_classes=4)(
            {"pred": pred, "original": image})
    weights = tmp_path / "same.pt"
    torch.save(_SameValue().state_dict(), weights)
    refine = RefineVertebraed("pred", "original", _SameValue(), str(weights), num_classes=4, size=64)
    out = refine({"pred": pred, "original": image})["pred"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "/x/case.nii.gz"
    assert out.shape == pred.shape and dice(out[0].numpy() == 2, label == 2) > 0.95
    with pytest.raises(ValueError, match="case.nii.gz: label map of shape"):
        refine({"pred": pred, "original": image[:, :200]})
