"""Per-vertebra Dice and HD95 table from the CSVs that the bundle's ``evaluate.json`` (MetricsSaver) writes.

``python -m spine_seg.evaluation_table EVAL_DIR [--dataset-json D]`` prints the table and writes
``EVAL_DIR/per_vertebra.csv``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spine_seg.atomic import write_text_atomic
from spine_seg.dataset_json import read_dataset_json
from spine_seg.errors import InputFileError, run_reporting_errors


def read_raw(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """MetricsSaver ``*_raw.csv`` -> (filenames, class columns, ``cases x classes`` float array)."""
    if not Path(path).is_file():
        raise InputFileError(path, "no such file: run `make evaluate` first (EVAL_OUT= names its folder)")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    classes = [c for c in header[1:] if c != "mean"]
    values = np.array([[float(v) for v in r[1 : 1 + len(classes)]] for r in body], dtype=np.float64)
    return [r[0] for r in body], classes, values.reshape(len(body), len(classes))


def structure_names(dataset_json: str | Path | None, count: int) -> list[str]:
    if dataset_json is None:
        return [f"structure_{k}" for k in range(1, count + 1)]
    labels = read_dataset_json(dataset_json)["labels"]
    return [labels[str(k)] for k in range(1, count + 1)]


def table(eval_dir: str | Path, dataset_json: str | Path | None = None) -> tuple[str, list[dict[str, object]]]:
    """Return the printable table and its rows (one per structure, then ``mean``)."""
    eval_dir = Path(eval_dir)
    files, _, dice = read_raw(eval_dir / "val_mean_dice_raw.csv")
    _, _, hd95 = read_raw(eval_dir / "val_hd95_raw.csv")
    names = structure_names(dataset_json, dice.shape[1])
    rows: list[dict[str, object]] = []
    for k, name in enumerate([*names, "mean"]):
        d = dice[:, k] if k < len(names) else np.nanmean(dice, axis=1)
        h = hd95[:, k] if k < len(names) else np.nanmean(hd95, axis=1)
        rows.append(
            {
                "structure": name,
                "dice_mean": float(np.nanmean(d)),
                "dice_std": float(np.nanstd(d)),
                "dice_min": float(np.nanmin(d)),
                "hd95_mean_px": float(np.nanmean(h)),
                "hd95_median_px": float(np.nanmedian(h)),
            }
        )
    lines = [
        f"{len(files)} validation cases",
        "| structure | Dice mean ± sd | Dice min | HD95 mean (px) | HD95 median (px) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['structure']} | {r['dice_mean']:.3f} ± {r['dice_std']:.3f} | {r['dice_min']:.3f} "
        f"| {r['hd95_mean_px']:.1f} | {r['hd95_median_px']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines), rows


def level_shift(pred: np.ndarray, label: np.ndarray, num_structures: int) -> int:
    """Median offset (in levels) between each predicted vertebra and the expert label it overlaps most.

    0 means the levels are named right; +1 means the prediction calls each vertebra one level too high.
    """
    offsets = []
    for k in range(1, num_structures + 1):
        overlap = np.bincount(label[pred == k].ravel(), minlength=num_structures + 1)[1:]
        if overlap.any():
            offsets.append(int(np.argmax(overlap)) + 1 - k)
    return int(np.median(offsets)) if offsets else 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2 * float((a & b).sum()) / total if total else 1.0


def mean_dice(pred: np.ndarray, label: np.ndarray, num_structures: int) -> float:
    """Mean over structures 1..num_structures of the Dice of two ``R x C`` label maps (0 where one lacks it)."""
    return float(np.mean([dice(pred == k, label == k) for k in range(1, num_structures + 1)]))


@dataclass(frozen=True)
class CaseLevels:
    """How one prediction names the levels: whole-spine Dice, level offset (see ``level_shift``), mean
    per-vertebra Dice, and whether :func:`spine_seg.anatomy.plausibility_problems` flags it (as ``spine-seg
    predict`` would, for a reader to check)."""

    spine_dice: float
    offset: int
    mean_dice: float
    flagged: bool


def case_levels(eval_dir: str | Path, labels_dir: str | Path, num_structures: int = 6) -> dict[str, CaseLevels]:
    """Label file name (``NNN.nii.gz``) -> ``CaseLevels`` for each ``EVAL_DIR/pred/NNN_seg.nii.gz``."""
    from spine_seg.anatomy import plausibility_problems
    from spine_seg.nifti_io import read_nifti

    cases = {}
    for pred_path in sorted((Path(eval_dir) / "pred").glob("*_seg.nii.gz")):
        name = pred_path.name.replace("_seg.nii.gz", ".nii.gz")
        pred = read_nifti(pred_path).astype(np.uint8)
        label = read_nifti(Path(labels_dir) / name).astype(np.uint8)
        cases[name] = CaseLevels(
            spine_dice=dice(pred > 0, label > 0),
            offset=level_shift(pred, label, num_structures),
            mean_dice=mean_dice(pred, label, num_structures),
            flagged=bool(plausibility_problems(pred, num_structures)),
        )
    return cases


def level_summary(eval_dir: str | Path, labels_dir: str | Path, num_structures: int = 6) -> str:
    """Whole-spine Dice (all vertebrae as one), how many cases have their levels shifted, the mean per-vertebra
    Dice of the cases whose levels are named right (offset 0), and how the predictions that the anatomy checks
    flag score against the others."""
    cases = list(case_levels(eval_dir, labels_dir, num_structures).values())
    shifts = [c.offset for c in cases]
    right = [c.mean_dice for c in cases if c.offset == 0]
    counts = {s: shifts.count(s) for s in sorted(set(shifts))}
    flagged = [c for c in cases if c.flagged]
    unflagged = [c for c in cases if not c.flagged]
    return (
        f"whole-spine Dice (levels ignored): {np.mean([c.spine_dice for c in cases]):.3f}; "
        f"cases by level offset: {', '.join(f'{k:+d}: {v}' for k, v in counts.items())}; "
        f"mean Dice of the {len(right)} cases at offset 0: {_mean(right):.3f}\n"
        f"anatomy checks (spine-seg predict's CHECK) flag {len(flagged)} of {len(cases)} predictions: mean Dice "
        f"{_group(flagged)}; the {len(unflagged)} unflagged: {_group(unflagged)}"
    )


def _group(cases: list[CaseLevels]) -> str:
    """Mean per-vertebra Dice of ``cases``, then how many of them have their levels off."""
    return f"{_mean([c.mean_dice for c in cases]):.3f}, {sum(c.offset != 0 for c in cases)} with levels off"


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("eval_dir")
    parser.add_argument("--dataset-json")
    args = parser.parse_args(argv)
    return run_reporting_errors(lambda: _print_table(args))


def _print_table(args: argparse.Namespace) -> int:
    text, rows = table(args.eval_dir, args.dataset_json)
    print(text)
    if args.dataset_json and (Path(args.eval_dir) / "pred").is_dir():
        print(level_summary(args.eval_dir, Path(args.dataset_json).parent / "labelsTr", len(rows) - 1))
    header = list(rows[0])
    body = [",".join(header)] + [",".join(str(r[h]) for h in header) for r in rows]
    write_text_atomic(Path(args.eval_dir) / "per_vertebra.csv", "\n".join(body) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
