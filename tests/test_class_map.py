"""Class maps at the original size (bundle/scripts/class_map.py): the same as MONAI's AsDiscrete(argmax) and
KeepLargestConnectedComponent, which they replace in the bundle's postprocessing."""

from __future__ import annotations

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
from scripts.class_map import ClassArgMax, ClassArgMaxd, KeepLargestPerLabel, KeepLargestPerLabeld  # noqa: E402


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


def test_largest_component_per_label_rejects_the_background() -> None:
    with pytest.raises(ValueError, match="0 is background"):
        KeepLargestPerLabel([0, 1])


def test_the_bundle_s_postprocessing_uses_them(bundle_config: Callable[..., ConfigParser]) -> None:
    for config, prefix in ((bundle_config("inference.json"), ""),
                           (bundle_config("train.json", "evaluate.json"), "validate#")):
        assert isinstance(config.get_parsed_content(f"{prefix}postprocessing_transforms#argmax"), ClassArgMaxd)
        largest = config.get_parsed_content(f"{prefix}largest_component")
        assert isinstance(largest, KeepLargestPerLabeld)
        assert largest.converter.applied_labels == list(range(1, config.get_parsed_content("num_classes")))
