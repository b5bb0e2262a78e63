"""Read the MSD-style ``dataset.json`` that ``data_prep`` writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spine_seg.errors import InputFileError


def read_dataset_json(path: str | Path) -> dict[str, Any]:
    """The parsed ``dataset.json``; :class:`InputFileError` naming the file if it is missing or not a JSON object."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InputFileError(path, "no such file (convert the data first: `make convert-data`)") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputFileError(path, f"not a readable dataset.json ({type(err).__name__}: {err})") from err
    if not isinstance(meta, dict):
        raise InputFileError(path, f"not a dataset.json: a JSON object is expected, not {type(meta).__name__}")
    return meta
