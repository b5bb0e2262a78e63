"""Export predicted class maps to the challenge format: ``R x C x K`` uint8 ``.npy`` per image.

The channel layout (e.g. background-last) and K come from the ``dataset.json`` written by ``data_prep``,
so the export reproduces the training masks' format exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spine_seg.anatomy import plausibility_problems
from spine_seg.atomic import atomic_path
from spine_seg.batch_report import BatchReport
from spine_seg.dataset_json import read_dataset_json
from spine_seg.errors import InputFileError
from spine_seg.label_layout import from_class_map, num_structures
from spine_seg.nifti_io import read_nifti

PRED_SUFFIXES = ("_seg.nii.gz", ".nii.gz", "_seg.nii", ".nii")


@dataclass(frozen=True)
class ExportFormat:
    """Channel layout and count of the exported masks."""

    layout: str = "background-last"
    channels: int = 7

    @classmethod
    def from_dataset_json(cls, path: str | Path) -> ExportFormat:
        meta = read_dataset_json(path)
        if not meta.get("label_layout"):
            raise ValueError(f"{path}: no label_layout recorded (was the dataset converted with labels?)")
        return cls(meta["label_layout"], int(meta["label_channels"]))


def case_id(pred_path: Path) -> str:
    """The case id of a prediction file: its name without ``_seg`` and the NIfTI suffix."""
    name = pred_path.name
    for suffix in PRED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return pred_path.stem


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` to a ``.npy`` file atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def class_map_to_challenge(class_map: np.ndarray, fmt: ExportFormat) -> np.ndarray:
    """``R x C`` class map -> ``R x C x K`` uint8 in ``fmt``; labels that are not whole numbers 0..N (N the
    format's structure count) are refused."""
    n = num_structures(fmt.layout, fmt.channels)
    if not class_map.size:
        return from_class_map(class_map.astype(np.uint8), fmt.layout, fmt.channels)
    if not np.issubdtype(class_map.dtype, np.integer) and not np.all(np.mod(class_map, 1) == 0):
        raise ValueError("class map has labels that are not whole numbers")
    if class_map.min() < 0:
        raise ValueError(f"class map has label {class_map.min():g}; labels are 0 (background) to {n}")
    if class_map.max() > n:
        raise ValueError(f"class map has label {class_map.max():g} but the format has {n} structures")
    return from_class_map(class_map.astype(np.uint8), fmt.layout, fmt.channels)


def export_dir(
    pred_dir: str | Path,
    out_dir: str | Path,
    fmt: ExportFormat,
    expected_shapes: dict[str, tuple[int, int]] | None = None,
    progress: bool = True,
    structure_names: list[str] | None = None,
) -> BatchReport:
    """Export every prediction NIfTI in ``pred_dir`` to ``out_dir/<id>.npy``; bad files are reported.

    ``expected_shapes`` maps case id to the original ``(R, C)``; a prediction of another size is bad. Each
    exported map is checked with :func:`spine_seg.anatomy.plausibility_problems` (``structure_names`` name the
    structures in its messages) and every case's status is written to ``out_dir/checks.csv``. Two files with
    the same case id (``001.nii.gz`` and ``001_seg.nii.gz``) are both refused.
    """
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    if not pred_dir.exists():
        raise FileNotFoundError(f"{pred_dir}: no such folder")
    if not pred_dir.is_dir():
        raise NotADirectoryError(f"{pred_dir}: not a folder of predictions")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: the output folder is a file")
    report = BatchReport()
    files = sorted(p for p in pred_dir.iterdir() if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{pred_dir}: no prediction NIfTI files")
    n = num_structures(fmt.layout, fmt.channels)
    by_case: dict[str, list[Path]] = {}
    for path in files:
        by_case.setdefault(case_id(path), []).append(path)
    for cid, paths in by_case.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            report.bad[cid] = f"{pred_dir}: {len(paths)} predictions for case {cid!r} ({names}); none exported"
    for path in tqdm(files, desc="export", unit="img", disable=not progress):
        cid = case_id(path)
        if cid in report.bad:
            continue
        try:
            class_map = read_nifti(path)
            want = (expected_shapes or {}).get(cid)
            if want is not None and tuple(class_map.shape) != tuple(want):
                raise ValueError(f"prediction is {class_map.shape} but the original image is {tuple(want)}")
            target = out_dir / f"{cid}.npy"
            save_npy(target, class_map_to_challenge(class_map, fmt))
            report.written.append(target)
        except InputFileError as err:  # names the file itself
            report.bad[cid] = str(err)
            continue
        except Exception as err:  # noqa: BLE001 - a bad file must not stop the batch
            report.bad[cid] = f"{path}: {err}"
            continue
        problems = plausibility_problems(class_map.astype(np.uint8), n, structure_names)
        if problems:
            report.implausible[cid] = problems
    report.cases = list(by_case)
    report.note_earlier_outputs(out_dir, (".npy",))
    report.write_checks(out_dir)
    return report


def shapes_from_dataset_json(path: str | Path) -> dict[str, tuple[int, int]]:
    """Original ``(R, C)`` of every case recorded in a ``dataset.json``."""
    meta = read_dataset_json(path)
    return {r["id"]: tuple(r["shape"]) for r in meta.get("training", []) + meta.get("test", [])}
