"""Stage 3's window geometry, how its windows are put back together, and the vertebrae's convex outlines, in numpy
and SciPy alone: shared by the bundle's ``scripts/vertebra_windows.py`` and ``scripts/class_map.py`` and the ONNX path
(``spine_seg.onnx_predict``, which loads this file without torch or MONAI)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

Window = tuple[float, float, float]  # centre row, centre column, side; pixels

# The limits of the anatomy checks (``spine_seg.anatomy`` takes them from here): a vertebra under MIN_AREA_RATIO x the
# case's median vertebra area is squeezed, and centre gaps outside GAP_RANGE x the chain's own spacing skip or double a
# vertebra.
MIN_AREA_RATIO = 0.5
GAP_RANGE = (0.6, 1.5)


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


def squeezed_vertebrae(label: np.ndarray, num: int) -> np.ndarray | None:
    """Per structure 1..``num`` of ``label`` (``R x C``): whether it is missing or under :data:`MIN_AREA_RATIO` x the
    median area of those present (``num`` booleans); None where none is present."""
    areas = np.bincount(np.asarray(label, dtype=np.int64).ravel(), minlength=num + 1)[1 : num + 1]
    return areas < MIN_AREA_RATIO * float(np.median(areas[areas > 0])) if areas.any() else None


def mend_end_windows(label: np.ndarray, num: int, windows: dict[int, Window]) -> dict[int, Window]:
    """``windows`` (:func:`vertebra_windows` of ``label``, ``R x C``) with the window of each end vertebra, 1 or
    ``num``, that breaks an otherwise regular chain moved one step beyond its neighbour: centre ``n + (n - m)`` for
    the window centres ``n`` of its neighbour and ``m`` of the next one, and the neighbour's side.

    The chain is the run of vertebrae present from the neighbour on (at least three, so two steps); it is regular
    when each of its steps lies within :data:`GAP_RANGE` x their median. Against a regular chain, an end breaks it
    when it is missing, under :data:`MIN_AREA_RATIO` x the median vertebra area, or when its centre lies outside
    :data:`GAP_RANGE` x the median step from its neighbour (a body skipped, or two labels on one body). Nothing is
    renamed. Returns a new dict in label order; the other windows are unchanged."""
    out, squeezed = dict(windows), squeezed_vertebrae(label, num)
    if num < 4 or squeezed is None:
        return out
    centre = {k: np.array(w[:2]) for k, w in windows.items()}
    for end, away in ((1, range(2, num + 1)), (num, range(num - 1, 0, -1))):
        chain = []
        for k in away:
            if k not in windows:
                break
            chain.append(centre[k])
        if len(chain) < 3:
            continue
        steps = np.hypot(*np.diff(chain, axis=0).T)
        pitch = float(np.median(steps))
        if not np.all((steps >= GAP_RANGE[0] * pitch) & (steps <= GAP_RANGE[1] * pitch)):
            continue
        if end in windows and not squeezed[end - 1] and \
                GAP_RANGE[0] <= float(np.hypot(*(centre[end] - chain[0]))) / pitch <= GAP_RANGE[1]:
            continue
        row, col = 2 * chain[0] - chain[1]
        out[end] = (float(row), float(col), windows[away[0]][2])
    return dict(sorted(out.items()))


def mend_middle_windows(label: np.ndarray, num: int, windows: dict[int, Window]) -> dict[int, Window]:
    """``windows`` (:func:`vertebra_windows` of ``label``, ``R x C``, possibly mended by :func:`mend_end_windows`)
    with the window of each middle vertebra, 2 to ``num - 1``, that is missing or under :data:`MIN_AREA_RATIO` x the
    median vertebra area, and whose two neighbours' centres lie :data:`GAP_RANGE` x two median steps apart, moved to
    the midpoint of its neighbours' centres, with the mean of their sides.

    The median step is taken over the pairs of consecutive vertebrae that are both present. Such a vertebra is
    squeezed between its neighbours (or stage 2 left its body unlabelled) while they leave room for one body between
    them. Nothing is renamed. Returns a new dict in label order; the other windows are unchanged."""
    out, squeezed = dict(windows), squeezed_vertebrae(label, num)
    if num < 3 or squeezed is None:
        return out
    centre = {k: np.array(w[:2]) for k, w in windows.items()}
    steps = [float(np.hypot(*(centre[k + 1] - centre[k]))) for k in range(1, num) if k in centre and k + 1 in centre]
    if not steps:
        return out
    pitch = float(np.median(steps))
    for k in range(2, num):
        if k - 1 not in windows or k + 1 not in windows or not squeezed[k - 1]:
            continue
        if GAP_RANGE[0] <= float(np.hypot(*(centre[k + 1] - centre[k - 1]))) / (2 * pitch) <= GAP_RANGE[1]:
            row, col = (centre[k - 1] + centre[k + 1]) / 2
            out[k] = (float(row), float(col), (windows[k - 1][2] + windows[k + 1][2]) / 2)
    return dict(sorted(out.items()))


def refine_windows(label: np.ndarray, num: int, ratio: float, mend_ends: bool = False,
                   mend_middle: bool = False, level_sizes: Sequence[float] | None = None) -> dict[int, Window]:
    """Stage 3's windows for the label map ``label`` (``R x C``, structures 1..``num``): :func:`vertebra_windows`,
    then, where switched on, :func:`mend_end_windows` and :func:`mend_middle_windows`, in that order, and last, with
    ``level_sizes`` (one per structure), each side from the case's scale and its level (:func:`level_sized_windows`)."""
    found = vertebra_windows(label, num, ratio)
    if mend_ends:
        found = mend_end_windows(label, num, found)
    if mend_middle:
        found = mend_middle_windows(label, num, found)
    if level_sizes is not None:
        found = level_sized_windows(found, level_sizes)
    return found


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


def convex_labels(label: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``label`` (``R x C``) with each of ``labels`` grown to the convex hull of its pixel centres, over background
    pixels only: the other labels keep theirs, and where two hulls meet on background the smaller label (the upper
    vertebra) keeps the pixel, as in the expert masks, whose vertebrae are filled quadrilaterals through four
    corners. A label whose pixels span no area (fewer than three, or all in one line) is left as it is. Returns a
    new map of ``label``'s dtype."""
    label = np.asarray(label)
    out = label.copy()
    boxes = ndimage.find_objects(label.astype(np.int64, copy=False), max(labels, default=0))
    for k in sorted(labels):
        box = boxes[k - 1]
        if box is None:
            continue
        mask = label[box] == k
        rows = np.flatnonzero(mask.any(axis=1))
        first, last = mask[rows].argmax(axis=1), mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
        try:  # the hull of each row's first and last pixel is that of all of them, from far fewer points
            planes = ConvexHull(np.r_[np.c_[rows, first], np.c_[rows, last]]).equations  # (row, col) normal, offset
        except QhullError:
            continue
        region = out[box]
        rows, cols = np.nonzero(region == 0)
        inside = np.all(np.outer(rows, planes[:, 0]) + np.outer(cols, planes[:, 1]) + planes[:, 2] <= 1e-6, axis=1)
        region[rows[inside], cols[inside]] = k  # <= 0 inside, with a tolerance for the pixels on an edge
    return out


def level_proportions(label: np.ndarray, num: int) -> np.ndarray | None:
    """Each structure's window size in ``label`` (``R x C``, structures 1..``num``): its bounding box's larger side
    over the median of them (``num`` values, their median 1); ``None`` unless every structure is present."""
    found = vertebra_windows(label, num, 1.0)
    if len(found) < num:
        return None
    sides = np.array([found[k][2] for k in range(1, num + 1)])
    return sides / np.median(sides)


def level_sized_windows(windows: dict[int, Window], level_sizes: Sequence[float]) -> dict[int, Window]:
    """``windows`` (of structures 1..``len(level_sizes)``) with each side the case's scale times its level's size
    (``level_sizes[k - 1]``): the scale is the median over the windows of side / level size. Centres unchanged."""
    if not windows:
        return windows
    sizes = np.asarray(level_sizes, dtype=float)
    scale = float(np.exp(np.median([np.log(w[2] / sizes[k - 1]) for k, w in windows.items()])))
    return {k: (row, col, scale * float(sizes[k - 1])) for k, (row, col, _) in windows.items()}
