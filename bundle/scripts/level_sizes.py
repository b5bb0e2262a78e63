"""Each level's typical window size, measured on the training labels and kept beside stage 3's weights.

Stage 3 cuts a square window around each vertebra of stage 2's map. A window sized by that vertebra alone carries
its errors: a vertebra drawn too small or too large gets a window to match, and stage 3 draws about the size its
window asks for. The levels keep their proportions from case to case (L5's window is about 1.2 times T12's), so
each window is sized instead by the case's scale (the median over its vertebrae) times its level's proportion.

``train_refine.json``'s ``finalize`` measures the proportions on the training labels
(:func:`write_level_sizes`) into ``refine_sizes.json`` beside ``refine.pt``; inference and evaluation read them
from beside the stage-3 weights they use (:func:`read_level_sizes`), so weights trained on another data set bring
their own.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.transforms import LoadImage
from tqdm import tqdm

from .vertebra_geometry import level_proportions
from .weights import write_atomic

logger = logging.getLogger(__name__)


def measure_level_sizes(label_paths: Sequence[str | os.PathLike], num: int) -> list[float] | None:
    """Median of :func:`~scripts.vertebra_geometry.level_proportions` over the labels (class maps with structures
    1..``num``) of ``label_paths`` that hold every structure: one size per structure, their median about 1 (medians
    of the logarithms); ``None`` where no label holds them all."""
    load = LoadImage(image_only=True)
    logs = []
    for path in tqdm(label_paths, desc="level sizes", unit="label"):
        sizes = level_proportions(np.asarray(load(path)).squeeze(), num)
        if sizes is not None:
            logs.append(np.log(sizes))
    return [round(float(v), 4) for v in np.exp(np.median(logs, axis=0))] if logs else None


def write_level_sizes(label_paths: Sequence[str | os.PathLike], num: int,
                      path: str | os.PathLike) -> list[float] | None:
    """Measure the level sizes on ``label_paths`` (:func:`measure_level_sizes`) and write them to ``path`` as JSON
    (``{"level_sizes": [...], "labels": N}``), atomically; returns them. Where no label holds every structure,
    nothing is measured: ``path`` is removed if an earlier run left one, with a warning, and inference sizes each
    window by its own vertebra."""
    sizes = measure_level_sizes(label_paths, num)
    if sizes is None:
        logger.warning("%s not written: none of the %d training labels holds all %d structures", path,
                       len(label_paths), num)
        if os.path.isfile(path):
            os.remove(path)
        return None
    write_atomic(path, (json.dumps({"level_sizes": sizes, "labels": len(label_paths)}, indent=1) + "\n").encode())
    return sizes


def read_level_sizes(path: str | os.PathLike) -> list[float] | None:
    """The level sizes of ``path`` (written by :func:`write_level_sizes`); ``None``, with a warning, where there is
    no such file (weights trained before 0.8.5: each window then takes its own vertebra's size)."""
    if not os.path.isfile(path):
        logger.warning("%s: no level sizes beside the stage-3 weights; each window takes its own vertebra's size", path)
        return None
    try:
        sizes = json.loads(Path(path).read_text())["level_sizes"]
        if not sizes or not all(isinstance(v, (int, float)) and v > 0 for v in sizes):
            raise ValueError("'level_sizes' is not a list of positive numbers")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a level-sizes file ({err})") from err
    return [float(v) for v in sizes]
