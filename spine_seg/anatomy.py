"""Anatomical plausibility checks on an ``R x C`` class map (0 background, 1..N vertebrae top to bottom)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def centroid_rows(class_map: np.ndarray, num_structures: int) -> list[float | None]:
    """Row coordinate (pixels) of each structure's centroid, None for an absent structure."""
    labels = np.arange(1, num_structures + 1)
    present = ndimage.sum_labels(np.ones_like(class_map, dtype=np.uint8), class_map, labels) > 0
    with np.errstate(invalid="ignore", divide="ignore"):  # absent labels give NaN centres, reported as None
        centres = ndimage.center_of_mass(np.ones_like(class_map, dtype=np.uint8), class_map, labels)
    return [float(c[0]) if ok else None for c, ok in zip(centres, present, strict=True)]


def order_problems(class_map: np.ndarray, num_structures: int, names: list[str] | None = None) -> list[str]:
    """Describe missing structures and pairs whose centroids do not run top to bottom in label order.

    Returns an empty list for a plausible prediction. Nothing is reordered.
    """
    names = names or [str(k) for k in range(1, num_structures + 1)]
    rows = centroid_rows(class_map, num_structures)
    problems = [f"{names[k]} missing" for k, r in enumerate(rows) if r is None]
    present = [(k, r) for k, r in enumerate(rows) if r is not None]
    for (k1, r1), (k2, r2) in zip(present, present[1:], strict=False):
        if r2 <= r1:
            problems.append(f"{names[k2]} (row {r2:.0f}) is not below {names[k1]} (row {r1:.0f})")
    return problems
