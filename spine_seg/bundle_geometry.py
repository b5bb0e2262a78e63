"""The bundle's stage-3 window geometry, ``bundle/scripts/vertebra_geometry.py``, loaded from its file: numpy and
SciPy only, where the bundle's ``scripts`` package as a whole needs torch and MONAI. One copy serves the bundle, the
ONNX path (:mod:`spine_seg.onnx_predict`) and the anatomy checks' limits (:mod:`spine_seg.anatomy`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

GEOMETRY = Path(__file__).resolve().parents[1] / "bundle" / "scripts" / "vertebra_geometry.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("spine_seg_vertebra_geometry", GEOMETRY)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


geometry = _load()
