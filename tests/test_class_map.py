"""Class maps at the original size (bundle/scripts/class_map.py): the same as MONAI's AsDiscrete(argmax) and
KeepLargestConnectedComponent, which they replace in the bundle's postprocessing; and each vertebra grown to its
convex hull (ConvexPerLabeld, on vertebra_geometry.convex_labels)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import AsDiscrete, KeepLargestConnectedComponent

from spine_seg.predict import DEFAULT_BUNDLE

sys.path.insert(0, str(DEFAULT_BUNDLE))
from scripts.class_map import (  # noqa: E402
    ClassArgMax,
    ClassArgMaxd,
    ConvexPerLabel,
    ConvexPerLabeld,
    KeepLargestPerLabel,
    KeepLargestPerLabeld,
)
from scripts.vertebra_geometry import convex_labels  # noqa: E402


@pytest.mark.parametrize("seed", range(4))
def test_argmax_is_monai_s_with_ties_to_the_first_class(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = MetaTensor(torch.as_tensor(rng.integers(0, 3, (7, 40, 30)), dtype=torch.float32), meta={"case": seed})
    assert (scores.max(0).values == scores).sum(0).max() > 1, "the scores must have ties"
    expected = AsDiscrete(argmax=True, dtype=torch.uint8)(scores)
    out = ClassArgMaxd("pred")({"pred": scores})["pred"]
    assert isinstance(out, MetaTensor) and out.meta["case"] == seed
    assert out.shape == (1, 40, 30) and out.dtype == torch.uint8
    assert torch.equal(out.as_tensor(), expected.as_tensor())
    assert ClassArgMax(torch.float32)(scores).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.int64])
def test_largest_component_per_label_is_monai_s(dtype: torch.dtype) -> None:
    """Random maps with several components per label, labels absent from the map, a MetaTensor's metadata kept
    and the input left as it was."""
    rng = np.random.default_rng(3)
    for trial in range(10):
        array = rng.choice(8, size=(1, 70, 50), p=[0.58] + [0.07] * 6 + [0.0])
        array[0, :, 25] = 0  # split the map in two halves so that every label has several components
        labels = [1, 2, 3, 5, 7]  # 4 and 6 left as they are; 7 is absent
        image = MetaTensor(torch.as_tensor(array, dtype=dtype), meta={"trial": trial})
        before = image.clone()
        expected = KeepLargestConnectedComponent(labels, is_onehot=False, independent=True)(image.clone())
        out = KeepLargestPerLabeld("pred", labels)({"pred": image})["pred"]
        assert torch.equal(image, before), "the input is not modified"
        assert not torch.equal(out, image), "some components must be removed"
        assert isinstance(out, MetaTensor) and out.meta["trial"] == trial and out.dtype == dtype
        assert torch.equal(torch.as_tensor(out).as_tensor(), torch.as_tensor(expected).as_tensor())
        assert torch.equal(out[image == 4], image[image == 4])


@pytest.mark.parametrize("transform", [KeepLargestPerLabel, ConvexPerLabel])
def test_per_label_transforms_reject_the_background(transform: type) -> None:
    with pytest.raises(ValueError, match="0 is background"):
        transform([0, 1])


def _quadrilateral(shape: tuple[int, int], corners: list[tuple[float, float]]) -> np.ndarray:
    """The pixels whose centres lie inside the convex polygon through ``corners`` (row, column; anticlockwise on
    the screen): a digital convex set, as the expert masks are."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    inside = np.ones(shape, bool)
    for (r0, c0), (r1, c1) in zip(corners, corners[1:] + corners[:1], strict=True):
        inside &= (r1 - r0) * (cols - c0) - (c1 - c0) * (rows - r0) <= 1e-9
    return inside


def test_convex_hull_fills_a_vertebra_s_notches_over_the_background_only() -> None:
    label = np.zeros((60, 50), np.uint8)
    label[10:30, 10:40] = 1
    label[14:26, 25:40] = 0  # a notch on the right: the hull fills it
    label[16:24, 32:40] = 2  # except where another vertebra lies
    label[40:50, 10:20], label[40:50, 30:40], label[44:46, 20:30] = 3, 3, 0  # a dumbbell: its waist is filled
    before = label.copy()
    out = convex_labels(label, [1, 2, 3, 5])  # 5 absent
    assert np.array_equal(label, before), "the input is not modified"
    assert out.dtype == label.dtype
    assert (out[10:30, 10:40] == 1).sum() == 20 * 30 - 8 * 8 and np.array_equal(out == 2, before == 2)
    assert (out[40:50, 10:40] == 3).all()
    assert (out != before).sum() == (12 * 15 - 8 * 8) + 10 * 10, "the notch and the waist, nothing else"


def test_a_convex_vertebra_is_left_as_it_is_and_the_upper_one_keeps_a_shared_pixel() -> None:
    tilted = _quadrilateral((80, 70), [(10.0, 12.0), (14.5, 55.0), (37.0, 52.3), (33.2, 9.1)])
    label = tilted.astype(np.uint8)
    assert np.array_equal(convex_labels(label, [1]), label), "a digital convex set is its own hull"
    # two labels of two blobs each, on crossing diagonals: where their hulls cross, the upper vertebra (1) wins
    two = np.zeros((40, 40), np.uint8)
    two[10:14, 0:5], two[20:24, 30:35] = 1, 1
    two[20:24, 0:5], two[10:14, 30:35] = 2, 2
    out = convex_labels(two, [1, 2])
    assert out[17, 17] == 1 and out[20, 7] == 2 and out[13, 7] == 1
    line = np.zeros((20, 20), np.uint8)
    line[5, 3:15] = 1  # no area to fill: left as it is
    assert np.array_equal(convex_labels(line, [1]), line)


def test_convex_transform_keeps_the_map_s_type_and_metadata() -> None:
    array = np.zeros((1, 40, 30), np.uint8)
    array[0, 5:20, 5:10], array[0, 15:20, 5:25] = 1, 1
    image = MetaTensor(torch.as_tensor(array), meta={"case": "L"})
    out = ConvexPerLabeld("pred", [1])({"pred": image})["pred"]
    assert isinstance(out, MetaTensor) and out.meta["case"] == "L"
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert torch.equal(image.as_tensor(), torch.as_tensor(array)), "the input is not modified"
    assert np.array_equal(out[0].numpy(), convex_labels(array[0], [1])) and int(out.sum()) > int(array.sum())


def test_the_bundle_s_postprocessing_uses_them(bundle_config: Callable[..., ConfigParser],
                                               caplog: pytest.LogCaptureFixture) -> None:
    for config, prefix in ((bundle_config("inference.json"), ""),
                           (bundle_config("train.json", "evaluate.json"), "validate#")):
        assert isinstance(config.get_parsed_content(f"{prefix}postprocessing_transforms#argmax"), ClassArgMaxd)
        largest = config.get_parsed_content(f"{prefix}largest_component")
        assert isinstance(largest, KeepLargestPerLabeld)
        assert largest.converter.applied_labels == list(range(1, config.get_parsed_content("num_classes")))
        convex = config.get_parsed_content(f"{prefix}convex")
        assert isinstance(convex, ConvexPerLabeld)
        assert convex.converter.applied_labels == largest.converter.applied_labels
        assert config.get_parsed_content("convex_vertebrae") is True
        # stage 3 sizes its windows by the level sizes that lie beside its weights (shipped: T12-L5, widening)
        refine = config.get_parsed_content(f"{prefix}refine")
        sizes = json.loads((DEFAULT_BUNDLE / "models" / "refine_sizes.json").read_text())["level_sizes"]
        assert refine.level_sizes == sizes and len(sizes) == refine.num and sizes == sorted(sizes)
        assert config.get_parsed_content("refine_sizes_path") == os.path.join(
            os.path.dirname(config.get_parsed_content("refine_ckpt_path")), "refine_sizes.json")
        config["refine_level_sizes"] = False
        assert config.get_parsed_content(f"{prefix}refine", lazy=False).level_sizes is None, "switched off"
        config["refine_level_sizes"], config["refine_vertebrae"] = True, False
        config["refine_ckpt_path"] = "/nowhere/refine.pt"  # no sizes to read, and none read with stage 3 off
        with caplog.at_level("WARNING"):
            assert config.get_parsed_content("refine_sizes", lazy=False) is None
        assert "no level sizes" not in caplog.text, "stage 3 off: its sizes file is not looked for"
