"""The cascade's crop: a box around the labelled vertebrae, in vertebra heights, and the coarse stage that finds it.

Stage 1 segments the whole radiograph on a coarse grid; :class:`CoarseSpineMaskd` runs it and leaves its
label map at the original size under ``mask_key``. Stage 2 sees only :class:`SpineBoxCropd`'s box around
that map (or around the expert label while training; :class:`RandSpineBoxCropd` jitters it), resized to its
own finer grid. The crop pads where the box leaves the image and is undone by ``Invertd``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    CropForeground,
    CropForegroundd,
    MapTransform,
    Randomizable,
    Resize,
    ScaleIntensityRangePercentiles,
)

from .class_map import KeepLargestPerLabel
from .weights import load_network


class SpineBoxCrop(CropForeground):
    """Crop a ``(C, H, W)`` image to the box around the labels > 0 of a ``(1, H, W)`` label map.

    The box spans the labelled rows plus ``margins = (top, bottom, side)`` vertebra heights (a vertebra
    height is the labelled height over the number of labels present), is widened or heightened about its
    centre to ``aspect`` = height / width, then moved by ``shift`` (rows, columns; vertebra heights) and
    scaled by ``zoom``. Parts outside the image are padded (``mode``). An empty map keeps the whole image.
    """

    def __init__(
        self,
        margins: Sequence[float] = (1.0, 1.5, 1.0),
        aspect: float = 2.0,
        lazy: bool = False,
        **pad_kwargs,
    ) -> None:
        super().__init__(allow_smaller=False, lazy=lazy, **pad_kwargs)
        self.margins = tuple(float(m) for m in margins)
        self.aspect = float(aspect)
        self.shift = (0.0, 0.0)
        self.zoom = 1.0

    def compute_bounding_box(self, img: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(start, end)`` pixel corners of the box for the label map ``img`` of shape ``(1, H, W)``."""
        labels = np.asarray(img[0] if isinstance(img, np.ndarray) else img[0].detach().cpu().numpy())
        rows, cols = np.nonzero(labels > 0)
        if rows.size == 0:
            return np.zeros(2, dtype=int), np.asarray(labels.shape)
        vertebra = (rows.max() + 1 - rows.min()) / max(1, np.unique(labels[rows, cols]).size)
        top, bottom, side = self.margins
        row_lo, row_hi = rows.min() - top * vertebra, rows.max() + 1 + bottom * vertebra
        width = max(cols.max() + 1 - cols.min() + 2 * side * vertebra, (row_hi - row_lo) / self.aspect)
        size = np.array([max(row_hi - row_lo, width * self.aspect), width]) * self.zoom
        centre = np.array([(row_lo + row_hi) / 2, (cols.min() + cols.max() + 1) / 2])
        centre += np.asarray(self.shift) * vertebra
        start = np.round(centre - size / 2).astype(int)
        return start, start + np.maximum(np.round(size).astype(int), 1)


class SpineBoxCropd(CropForegroundd):
    """Dictionary twin of :class:`SpineBoxCrop`: crop ``keys`` to the box around ``d[source_key]``; invertible."""

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str,
        margins: Sequence[float] = (1.0, 1.5, 1.0),
        aspect: float = 2.0,
        mode: str | Sequence[str] = "constant",
        allow_missing_keys: bool = False,
        lazy: bool = False,
        **pad_kwargs,
    ) -> None:
        super().__init__(keys, source_key, mode=mode, allow_missing_keys=allow_missing_keys, lazy=lazy)
        self.cropper = SpineBoxCrop(margins, aspect, lazy=lazy, **pad_kwargs)


class RandSpineBoxCropd(Randomizable, SpineBoxCropd):
    """:class:`SpineBoxCropd` with the box moved by up to ``max_shift`` (rows, columns; vertebra heights) and
    scaled by a factor drawn from ``zoom_range``: training crops that look like an imperfect stage 1.
    Other arguments as :class:`SpineBoxCropd`."""

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str,
        max_shift: Sequence[float] = (0.5, 0.3),
        zoom_range: Sequence[float] = (0.85, 1.15),
        **kwargs,
    ) -> None:
        super().__init__(keys, source_key, **kwargs)
        self.max_shift = tuple(float(s) for s in max_shift)
        self.zoom_range = tuple(float(z) for z in zoom_range)

    def randomize(self, data: object = None) -> None:
        self.cropper.shift = tuple(self.R.uniform(-s, s) for s in self.max_shift)
        self.cropper.zoom = self.R.uniform(*self.zoom_range)

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict:
        self.randomize()
        return super().__call__(data, lazy)


class CoarseSpineMaskd(MapTransform):
    """Run the stage-1 network on the whole image ``d[key]`` (``(1, H, W)``) and store its label map.

    The image is resized to ``spatial_size`` (bilinear, anti-aliased), scaled to [0, 1] between its
    ``percentiles``, segmented, reduced to the largest component per label (1..``num_classes``-1) and the
    label map resized back to ``(H, W)`` (nearest) into ``d[mask_key]`` as a ``(1, H, W)`` uint8 tensor.
    ``network`` gets the weights of ``ckpt_path`` on first use. The image itself is not changed; an image that
    is not ``(1, H, W)`` (a 3D volume, colour) raises a ValueError naming its file.
    """

    def __init__(
        self,
        keys: KeysCollection,
        network: torch.nn.Module,
        ckpt_path: str,
        spatial_size: Sequence[int],
        num_classes: int = 7,
        mask_key: str = "spine_mask",
        percentiles: Sequence[float] = (0.5, 99.5),
        device: str | torch.device = "cpu",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.network = network
        self.ckpt_path = str(ckpt_path)
        self.mask_key = mask_key
        self.device = torch.device(device)
        self.resize = Resize(spatial_size, mode="bilinear", anti_aliasing=True)
        self.scale = ScaleIntensityRangePercentiles(*percentiles, b_min=0.0, b_max=1.0, clip=True)
        self.largest = KeepLargestPerLabel(range(1, num_classes))
        self._loaded = False

    def load(self) -> None:
        """Load ``ckpt_path`` into the network (a bare state dict or one under ``"model"``); clear error if bad."""
        load_network(self.network, self.ckpt_path, "stage-1 (coarse)", self.device)
        self._loaded = True

    @torch.no_grad()
    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].ndim != 3 or d[key].shape[0] != 1:
                source = getattr(d[key], "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{source}: not a 2D grayscale radiograph (array of shape {tuple(d[key].shape)} "
                                 "after adding the channel axis; expected 1 x rows x columns)")
            if not self._loaded:
                self.load()
            image = torch.as_tensor(d[key]).float()
            work = self.scale(self.resize(image))
            logits = self.network(torch.as_tensor(work)[None].to(self.device))[0]
            labels = self.largest(logits.argmax(0, keepdim=True).cpu())
            full = Resize(image.shape[1:], mode="nearest")(torch.as_tensor(labels).float())
            d[self.mask_key] = torch.as_tensor(full).to(torch.uint8)
        return d
