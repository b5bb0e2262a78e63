"""The cascade's crop (bundle/scripts/spine_crop.py) and its numpy mirror in the ONNX path."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.networks.nets import BasicUNet
from monai.transforms import Compose, Invertd, Resized
from scipy import ndimage

from spine_seg.onnx_predict import box_slices, resize_nearest, spine_box
from spine_seg.predict import DEFAULT_BUNDLE

sys.path.insert(0, str(DEFAULT_BUNDLE))
from scripts.spine_crop import CoarseSpineMaskd, RandSpineBoxCropd, SpineBoxCrop, SpineBoxCropd  # noqa: E402


def ladder(shape: tuple[int, int] = (300, 120), top: int = 80, height: int = 18, gap: int = 4,
           cols: tuple[int, int] = (40, 75)) -> torch.Tensor:
    """A ``(1, H, W)`` label map with six stacked boxes labelled 1..6 from the top."""
    labels = torch.zeros(1, *shape)
    for k in range(6):
        r = top + k * (height + gap)
        labels[0, r : r + height, cols[0] : cols[1]] = k + 1
    return labels


def test_box_holds_the_vertebrae_with_margins_and_the_aspect() -> None:
    labels = ladder()
    start, end = SpineBoxCrop(margins=(1.0, 1.5, 1.0), aspect=2.0).compute_bounding_box(labels)
    vertebra = (80 + 5 * 22 + 18 - 80) / 6
    assert start[0] == pytest.approx(80 - vertebra, abs=1) and end[0] >= 80 + 128 + 1.5 * vertebra - 1
    assert start[1] <= 40 - vertebra and end[1] >= 75 + vertebra
    height, width = end - start
    assert height / width == pytest.approx(2.0, rel=0.02)


def test_empty_map_keeps_the_whole_image() -> None:
    start, end = SpineBoxCrop().compute_bounding_box(torch.zeros(1, 50, 30))
    assert start.tolist() == [0, 0] and end.tolist() == [50, 30]


def test_crop_pads_outside_the_image_and_inverts_to_the_original_grid() -> None:
    labels = ladder(shape=(220, 60), top=60, cols=(5, 40))  # the box leaves the image on the left and bottom
    image = MetaTensor(torch.arange(220 * 60, dtype=torch.float32).reshape(1, 220, 60) + 1)
    crop = SpineBoxCropd(["image", "label"], "label")
    pipeline = Compose([crop, Resized("image", (64, 32), mode="bilinear")])
    data = pipeline({"image": image, "label": MetaTensor(labels)})
    start, end = crop.cropper.compute_bounding_box(labels)
    assert tuple(data["label"].shape[1:]) == tuple(end - start)
    assert (start < 0).any() or (end > (220, 60)).any(), "the case must exercise the padding"
    assert int(data["label"].max()) == 6 and int((data["label"] > 0).sum()) == int((labels > 0).sum())
    data["pred"] = data["image"].clone()
    restored = Invertd("pred", pipeline, orig_keys="image", nearest_interp=False)(data)["pred"]
    assert restored.shape == image.shape
    in_image, _ = box_slices(start, end, (220, 60))
    outside = torch.ones(220, 60, dtype=torch.bool)
    outside[in_image] = False
    assert (restored[0][outside] == 0).all(), "pixels outside the box come back as zeros"


def test_random_crop_is_seeded_and_varies() -> None:
    data = {"image": MetaTensor(torch.rand(1, 300, 120)), "label": MetaTensor(ladder())}
    shapes = []
    for seed in (0, 0, 1):
        crop = RandSpineBoxCropd(["image", "label"], "label", max_shift=(0.5, 0.3), zoom_range=(0.8, 1.2))
        crop.set_random_state(seed)
        shapes.append(tuple(crop(dict(data))["image"].shape))
    assert shapes[0] == shapes[1] != shapes[2]


@pytest.mark.parametrize("seed", range(5))
def test_numpy_box_matches_the_bundle_transform(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.zeros((int(rng.integers(100, 400)), int(rng.integers(40, 160))), dtype=np.uint8)
    for k in range(int(rng.integers(1, 7))):
        r, c = rng.integers(0, labels.shape[0] - 10), rng.integers(0, labels.shape[1] - 10)
        labels[r : r + 10, c : c + 10] = k + 1
    margins, aspect = (1.0, 1.5, 1.0), float(rng.uniform(1.5, 3.0))
    expected = SpineBoxCrop(margins, aspect).compute_bounding_box(torch.from_numpy(labels)[None])
    ours = spine_box(labels, margins, aspect)
    np.testing.assert_array_equal(ours[0], expected[0])
    np.testing.assert_array_equal(ours[1], expected[1])


@pytest.mark.parametrize("size", [(96, 48), (700, 300)])
def test_numpy_nearest_resize_matches_torch(size: tuple[int, int]) -> None:
    from monai.transforms import Resize

    labels = np.random.default_rng(3).integers(0, 7, (384, 144)).astype(np.uint8)
    expected = Resize(size, mode="nearest")(torch.from_numpy(labels)[None].float())[0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(resize_nearest(labels, size), expected)


def test_coarse_stage_writes_a_full_size_label_map(tmp_path: Path) -> None:
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=7, features=(4, 4, 8, 8, 16, 4))
    with pytest.raises(FileNotFoundError, match="missing.pt: no stage-1"):
        CoarseSpineMaskd("image", net, str(tmp_path / "missing.pt"), (64, 32))({"image": torch.rand(1, 90, 50)})
    bad = tmp_path / "bad.pt"
    torch.save({"nope": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError, match=r"bad.pt: cannot load the stage-1 \(coarse\) weights"):
        CoarseSpineMaskd("image", net, str(bad), (64, 32))({"image": torch.rand(1, 90, 50)})
    volume = MetaTensor(torch.rand(1, 30, 20, 4), meta={"filename_or_obj": "/x/volume.nii.gz"})
    with pytest.raises(ValueError, match=r"volume.nii.gz: not a 2D grayscale radiograph \(array of shape"):
        CoarseSpineMaskd("image", net, str(tmp_path / "missing.pt"), (64, 32))({"image": volume})
    good = tmp_path / "coarse.pt"
    torch.save({"model": net.state_dict()}, good)
    image = torch.rand(1, 90, 50)
    out = CoarseSpineMaskd("image", net, str(good), (64, 32))({"image": image})
    assert out["spine_mask"].shape == (1, 90, 50) and out["spine_mask"].dtype == torch.uint8
    assert int(out["spine_mask"].max()) <= 6
    assert torch.equal(out["image"], image), "the image itself is not changed"


def test_training_crops_from_the_shrunk_image_match_the_full_size_crops(
        bundle_config: Callable[..., ConfigParser]) -> None:
    """train.json shrinks image and label to ``train_longest_side`` before caching; the stage-2 crop cut from
    that must show the same anatomy, on the same grid, as the crop cut from the full-size radiograph."""
    parser = bundle_config("train.json")
    shrink, crop, to_grid = (parser.get_parsed_content(k) for k in ("train#shrink", "spine_crop", "label_resize"))
    labels = ladder(shape=(3000, 1100), top=900, height=150, gap=30, cols=(400, 700))
    image = (labels > 0).float() * 100 + 20
    full = {"image": MetaTensor(image), "label": MetaTensor(labels)}
    small = shrink(dict(full))
    assert max(small["label"].shape[1:]) == parser.get_parsed_content("train_longest_side")
    assert small["label"].unique().tolist() == list(range(7))
    grids = [to_grid(Resized("image", parser.get_parsed_content("spatial_size"))(crop(d))) for d in (full, small)]
    assert grids[0]["label"].shape == grids[1]["label"].shape == (1, *parser.get_parsed_content("spatial_size"))
    agree = (grids[0]["label"] == grids[1]["label"]).float().mean()
    assert agree > 0.99, f"the label crops agree on {agree:.3f} of the grid"
    assert (grids[0]["image"] - grids[1]["image"]).abs().mean() < 0.02 * 100


def _label_offset(mode: str, spatial_size: list[int]) -> np.ndarray:
    """Mean (rows, columns) offset, in grid pixels, of a resized label's centre from its resized image's, over
    boxes at 40 sub-pixel positions of a 1000 x 500 image taken down to ``spatial_size`` (about 4x)."""
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(40):
        r, c = rng.integers(200, 600), rng.integers(100, 300)
        label = torch.zeros(1, 1000, 500)
        label[0, r : r + 120, c : c + 130] = 1
        grid = Resized(["image", "label"], spatial_size, mode=["bilinear", mode], anti_aliasing=[True, False])(
            {"image": label.clone(), "label": label})
        offsets.append(np.subtract(*(ndimage.center_of_mass(grid[k][0].numpy()) for k in ("label", "image"))))
    return np.mean(offsets, axis=0)


def test_training_labels_stay_centred_on_their_images(bundle_config: Callable[..., ConfigParser]) -> None:
    """train.json's label resizing (``label_resize_mode``, also used by ``train#shrink``) keeps each label on its
    image: torch's legacy ``nearest`` samples the first source pixel of each cell and moves a 4x-downsampled
    label about half a grid pixel down and right, which the network then learns and predicts."""
    parser = bundle_config("train.json")
    mode, size = parser.get_parsed_content("label_resize_mode"), parser.get_parsed_content("spatial_size")
    assert parser.get_parsed_content("label_resize").mode[0] == mode
    assert parser.get_parsed_content("train#shrink").mode[1] == mode
    assert np.abs(_label_offset(mode, size)).max() < 0.1
    assert (_label_offset("nearest", size) > 0.3).all()  # the legacy mode this replaces fails the check above
