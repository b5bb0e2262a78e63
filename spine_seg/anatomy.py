"""Anatomical plausibility checks on an ``R x C`` class map (0 background, 1..N vertebrae top to bottom).

The same checks serve expert labels (:mod:`spine_seg.label_audit`) and predictions (``spine-seg predict``,
``spine-seg export``, ``make evaluate``). None of them changes the map.
"""

from __future__ import annotations

import numpy as np

from spine_seg.bundle_geometry import geometry

# A vertebra under this fraction of the case's median vertebra area is squeezed, or drawn over by a neighbour; centroid
# gaps outside this range, in multiples of the case's median gap, mean a skipped or doubled vertebra. One definition,
# in the bundle's window geometry, whose stage 3 mends the chain (its ends, a squeezed middle vertebra) by them.
MIN_AREA_RATIO: float = geometry.MIN_AREA_RATIO
GAP_RANGE: tuple[float, float] = geometry.GAP_RANGE


def structure_geometry(class_map: np.ndarray, num_structures: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroid row (pixels) and area (pixels) of each structure 1..N, NaN for an absent one; two arrays of
    shape ``(num_structures,)``. One pass per structure, counting its pixels row by row, so that the checks
    below cost tens of milliseconds on a full-size radiograph."""
    counts = np.stack([np.count_nonzero(class_map == k, axis=1) for k in range(1, num_structures + 1)])
    areas = counts.sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):  # absent structures give NaN
        rows = (counts @ np.arange(counts.shape[1], dtype=float)) / areas
    return rows, np.where(areas > 0, areas, np.nan)


def resolve_names(names: list[str] | None, num_structures: int) -> list[str]:
    """``names`` (one per structure, else ValueError), or ``"1"`` .. ``"N"`` when None."""
    if names is None:
        return [str(k) for k in range(1, num_structures + 1)]
    if len(names) != num_structures:
        raise ValueError(f"{len(names)} structure names for {num_structures} structures: {', '.join(names)}")
    return names


def order_problems(class_map: np.ndarray, num_structures: int, names: list[str] | None = None) -> list[str]:
    """Describe missing structures and pairs whose centroids do not run top to bottom in label order.

    Returns an empty list for a plausible prediction. Nothing is reordered.
    """
    return _order_problems(structure_geometry(class_map, num_structures)[0], resolve_names(names, num_structures))


def _order_problems(rows: np.ndarray, names: list[str]) -> list[str]:
    problems = [f"{names[k]} missing" for k, r in enumerate(rows) if np.isnan(r)]
    present = [(k, r) for k, r in enumerate(rows) if not np.isnan(r)]
    for (k1, r1), (k2, r2) in zip(present, present[1:], strict=False):
        if r2 <= r1:
            problems.append(f"{names[k2]} (row {r2:.0f}) is not below {names[k1]} (row {r1:.0f})")
    return problems


def spacing_problems(rows: np.ndarray, areas: np.ndarray, names: list[str]) -> list[str]:
    """Squeezed vertebrae (area under :data:`MIN_AREA_RATIO` x the median) and centroid gaps outside
    :data:`GAP_RANGE` x the median gap (a skipped or doubled vertebra), from per-structure centroid ``rows``
    and ``areas`` (pixels, NaN where absent)."""
    problems: list[str] = []
    if np.any(~np.isnan(areas)):
        median_area = np.nanmedian(areas)
        problems += [
            f"{names[k]} area {a / median_area:.2f} x the median vertebra"
            for k, a in enumerate(areas)
            if a < MIN_AREA_RATIO * median_area
        ]
    present = [(k, r) for k, r in enumerate(rows) if not np.isnan(r)]
    gaps = np.diff([r for _, r in present])
    if gaps.size > 1:
        ratio = gaps / np.median(gaps)
        problems += [
            f"{names[present[i][0]]}-{names[present[i + 1][0]]} gap {q:.2f} x the median"
            for i, q in enumerate(ratio)
            if not GAP_RANGE[0] <= q <= GAP_RANGE[1]
        ]
    return problems


def geometry_problems(rows: np.ndarray, areas: np.ndarray, names: list[str]) -> list[str]:
    """Every check, from :func:`structure_geometry`'s ``rows`` and ``areas``: the order problems of
    :func:`order_problems`, then :func:`spacing_problems`."""
    return _order_problems(rows, names) + spacing_problems(rows, areas, names)


def plausibility_problems(class_map: np.ndarray, num_structures: int, names: list[str] | None = None) -> list[str]:
    """Every check on one class map (:func:`geometry_problems`). Empty if plausible."""
    return geometry_problems(*structure_geometry(class_map, num_structures), resolve_names(names, num_structures))
