"""Class maps at the original image size, as MONAI's transforms make them, in a fraction of the CPU time.

At 3000 x 2500 px, ``AsDiscreted(argmax=True)`` on seven probability maps takes about 1.1 s on two CPU cores
(``torch.argmax`` over the outermost axis) and ``KeepLargestConnectedComponentd`` about 0.5 s (it labels the whole
image once per vertebra). :class:`ClassArgMaxd` takes ``torch.max``'s indices instead, and
:class:`KeepLargestPerLabeld` labels each vertebra within its own bounding box. The outputs are the same.
:class:`ConvexPerLabeld` grows each vertebra to its convex hull, the shape of the expert masks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.transforms.utils import get_largest_connected_component_mask
from scipy import ndimage

from .vertebra_geometry import convex_labels


class ClassArgMax(Transform):
    """``(C, ...)`` class scores -> ``(1, ...)`` class map of ``dtype``: the index of the highest score, the first
    of equal ones, as ``AsDiscrete(argmax=True, dtype=dtype)``. Keeps a MetaTensor's metadata."""

    def __init__(self, dtype: torch.dtype = torch.uint8) -> None:
        self.dtype = dtype

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(img).max(0, keepdim=True).indices.to(self.dtype)


class _EachKey(MapTransform):
    """A dictionary twin: ``self.converter`` applied to each of ``keys``."""

    converter: Transform

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class ClassArgMaxd(_EachKey):
    """Dictionary twin of :class:`ClassArgMax`."""

    def __init__(self, keys: KeysCollection, dtype: torch.dtype = torch.uint8,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ClassArgMax(dtype)


class _PerLabel(Transform):
    """A transform of the structures ``applied_labels`` of a ``(1, H, W)`` label map; each label is at least 1 (0 is
    the background)."""

    def __init__(self, applied_labels: Sequence[int]) -> None:
        self.applied_labels = [int(label) for label in applied_labels]
        if any(label < 1 for label in self.applied_labels):
            raise ValueError(f"applied_labels {self.applied_labels}: structure labels are 1 or more (0 is background)")


class _PerLabeld(_EachKey):
    """The dictionary twin of a :class:`_PerLabel` transform, ``per_label``."""

    per_label: type[_PerLabel]

    def __init__(self, keys: KeysCollection, applied_labels: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = self.per_label(applied_labels)


class KeepLargestPerLabel(_PerLabel):
    """In a ``(1, H, W)`` label map, each of ``applied_labels`` keeps its largest connected component (full
    connectivity) and its other pixels become 0: ``KeepLargestConnectedComponent(applied_labels, is_onehot=False,
    independent=True)``, each label's components found (by MONAI's ``get_largest_connected_component_mask``)
    within the label's bounding box instead of the whole image. Returns a new map of the input's type."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(img).clone()
        labels = np.asarray(out[0].detach().cpu(), dtype=np.int32)  # find_objects takes integer maps only
        boxes = ndimage.find_objects(labels, max(self.applied_labels, default=0))
        for label in self.applied_labels:
            box = boxes[label - 1]
            if box is None:
                continue
            region = out[0][box]
            foreground = region == label
            region[foreground & ~torch.as_tensor(get_largest_connected_component_mask(foreground))] = 0
        return out


class KeepLargestPerLabeld(_PerLabeld):
    """Dictionary twin of :class:`KeepLargestPerLabel`."""

    per_label = KeepLargestPerLabel


class ConvexPerLabel(_PerLabel):
    """In a ``(1, H, W)`` label map, each of ``applied_labels`` grown to the convex hull of its pixels over the
    background (:func:`~scripts.vertebra_geometry.convex_labels`: the other labels keep theirs, and the upper
    vertebra keeps a pixel that two hulls share). Returns a new map of the input's type."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(img).clone()
        out[0] = torch.as_tensor(convex_labels(out[0].detach().cpu().numpy(), self.applied_labels))
        return out


class ConvexPerLabeld(_PerLabeld):
    """Dictionary twin of :class:`ConvexPerLabel`."""

    per_label = ConvexPerLabel
