"""Stage 3's window geometry, and how its windows are put back together, in numpy and SciPy alone: shared by the
bundle's ``scripts/vertebra_windows.py`` and the ONNX path (``spine_seg.onnx_predict``, which loads this file
without torch or MONAI)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

Window = tuple[float, float, float]  # centre row, centre column, side; pixels


def vertebra_windows(label: np.ndarray, num: int, ratio: float) -> dict[int, Window]:
    """Per structure 1..``num`` present in ``label`` (``R x C``): the centre of its bounding box (row, column) and
    the side of its square window, ``ratio`` times the box's larger side, in pixels."""
    out = {}
    for k, box in enumerate(ndimage.find_objects(np.asarray(label, dtype=np.int64), num), 1):
        if box is not None:
            rows, cols = box
            out[k] = ((rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2,
                      ratio * max(rows.stop - rows.start, cols.stop - cols.start))
    return out


def window_overlap(window: Window, shape: Sequence[int]) -> tuple[int, tuple[slice, slice], tuple[slice, slice]]:
    """The window's side in whole pixels, and the slices of its part inside an image of ``shape``: in the image
    and in the window (empty where it lies wholly outside)."""
    row, col, side = window
    size = max(int(round(side)), 1)
    r0, c0 = int(round(row - size / 2)), int(round(col - size / 2))
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = max(min(r0 + size, shape[0]), rs), max(min(c0 + size, shape[1]), cs)
    return size, (slice(rs, re), slice(cs, ce)), (slice(rs - r0, re - r0), slice(cs - c0, ce - c0))


def paste_best(pieces: Iterable[tuple[int, np.ndarray, Window]], shape: Sequence[int], threshold: float) -> np.ndarray:
    """The ``shape`` (``R x C``) uint8 label map where each pixel takes the label of the piece most probable there,
    if that probability is over ``threshold``, else 0. A piece is a label, its probability map (``side x side``, on
    the window's own pixels, ``side`` as :func:`window_overlap` gives it) and its window; the first of equal ones
    wins. Only the window's part of the map is touched per piece: no full-size map per vertebra."""
    best = np.zeros(tuple(shape), dtype=np.float32)
    labels = np.zeros(tuple(shape), dtype=np.uint8)
    for label, prob, window in pieces:
        _, inside, part = window_overlap(window, shape)
        prob = np.asarray(prob, dtype=np.float32)[part]
        wins = prob > best[inside]
        best[inside] = np.where(wins, prob, best[inside])
        labels[inside] = np.where(wins, label, labels[inside])
    labels[best <= threshold] = 0
    return labels
