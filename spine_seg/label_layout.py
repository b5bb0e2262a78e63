"""Channel layouts of ``R x C x K`` challenge masks and their exact conversion to/from class maps.

A class map is an ``R x C`` uint8 array: 0 background, ``1..N`` the structures in channel order.

Layouts:
    ``background-last``: channels ``0..K-2`` are structures, channel ``K-1`` is their complement.
    ``union-last``: channels ``0..K-2`` are structures, channel ``K-1`` is their union ("whole spine").
    ``background-first``: channel 0 is the complement of channels ``1..K-1``.
    ``one-hot``: all ``K`` channels are structures; a pixel with no channel set is background.
"""

from __future__ import annotations

import numpy as np

LAYOUTS = ("background-last", "union-last", "background-first", "one-hot")


def structure_slice(layout: str, channels: int) -> slice:
    """The channel range holding the structures for ``layout``."""
    if layout in ("background-last", "union-last"):
        return slice(0, channels - 1)
    if layout == "background-first":
        return slice(1, channels)
    if layout == "one-hot":
        return slice(0, channels)
    raise ValueError(f"unknown label layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def num_structures(layout: str, channels: int) -> int:
    """Number of structure classes (without background) for ``layout`` with ``channels`` channels."""
    s = structure_slice(layout, channels)
    return s.stop - s.start


def check_layout(mask: np.ndarray, layout: str) -> str | None:
    """Return why ``mask`` (``R x C x K``, binary) does not follow ``layout``, or None when it does."""
    structures = mask[..., structure_slice(layout, mask.shape[-1])]
    overlap = int((structures.sum(-1, dtype=np.int64) > 1).sum())
    if overlap:
        return f"structure channels overlap in {overlap} pixels"
    union = structures.any(-1)
    if layout == "background-last" and not np.array_equal(mask[..., -1].astype(bool), ~union):
        return "last channel is not the complement of the structure channels"
    if layout == "union-last" and not np.array_equal(mask[..., -1].astype(bool), union):
        return "last channel is not the union of the structure channels"
    if layout == "background-first" and not np.array_equal(mask[..., 0].astype(bool), ~union):
        return "first channel is not the complement of the structure channels"
    return None


def detect_layout(mask: np.ndarray) -> str:
    """Return the first layout in :data:`LAYOUTS` that ``mask`` (``R x C x K``) follows.

    When every pixel has exactly one channel set, both ``background-last`` and ``background-first`` fit;
    the background is then taken to be the larger of the two end channels.
    Raises ValueError listing why each layout fails.
    """
    reasons = {}
    for layout in LAYOUTS:
        reason = check_layout(mask, layout)
        if reason is None:
            if (
                layout == "background-last"
                and mask[..., 0].sum(dtype=np.int64) > mask[..., -1].sum(dtype=np.int64)
                and check_layout(mask, "background-first") is None
            ):
                return "background-first"
            return layout
        reasons[layout] = reason
    raise ValueError("no label layout fits: " + "; ".join(f"{k}: {v}" for k, v in reasons.items()))


def to_class_map(mask: np.ndarray, layout: str) -> np.ndarray:
    """Collapse an ``R x C x K`` mask in ``layout`` to an ``R x C`` uint8 class map (0 = background)."""
    structures = mask[..., structure_slice(layout, mask.shape[-1])].astype(bool)
    labels = np.arange(1, structures.shape[-1] + 1, dtype=np.uint8)
    return (structures * labels).max(-1, initial=0).astype(np.uint8)


def from_class_map(class_map: np.ndarray, layout: str, channels: int) -> np.ndarray:
    """Expand an ``R x C`` class map to the ``R x C x channels`` uint8 mask of ``layout``."""
    s = structure_slice(layout, channels)
    out = np.zeros((*class_map.shape, channels), dtype=np.uint8)
    out[..., s] = class_map[..., None] == np.arange(1, s.stop - s.start + 1)
    if layout == "background-last":
        out[..., -1] = class_map == 0
    elif layout == "union-last":
        out[..., -1] = class_map > 0
    elif layout == "background-first":
        out[..., 0] = class_map == 0
    return out
