"""Paired comparison of two evaluations of the same validation cases (``make evaluate`` output folders).

``python -m spine_seg.eval_compare NEW_EVAL_DIR BASE_EVAL_DIR`` prints, for the per-case mean Dice over the
vertebrae, the mean difference NEW − BASE with a 95 % bootstrap confidence interval (BCa, cases resampled,
seeded), the Wilcoxon signed-rank p-value, and how many cases got better or worse by more than ``--tie``.
``--levels-right LABELS_DIR`` repeats the comparison on the cases that both evaluations name right (level
offset 0 against the expert labels in LABELS_DIR; both folders need their ``pred/``), which separates the
outlines from the naming.
With 95 cases, a gain whose interval includes 0 may be noise: one case named a level differently moves
its mean Dice by about 0.7.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from spine_seg.errors import InputFileError
from spine_seg.evaluation_table import case_levels, read_raw


@dataclass(frozen=True)
class PairedDifference:
    """Per-case NEW − BASE differences of one metric, summarised."""

    cases: int
    mean_new: float
    mean_base: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    better: int
    worse: int

    def __str__(self) -> str:
        return (
            f"{self.cases} paired cases: mean Dice {self.mean_new:.3f} against {self.mean_base:.3f}, "
            f"difference {self.difference:+.4f} (95 % CI {self.ci_low:+.4f} to {self.ci_high:+.4f}; "
            f"Wilcoxon p = {self.p_value:.3g}); better in {self.better}, worse in {self.worse}"
        )


def case_means(eval_dir: str | Path) -> dict[str, float]:
    """Case file name -> mean Dice over the structures, from ``EVAL_DIR/val_mean_dice_raw.csv``."""
    path = Path(eval_dir) / "val_mean_dice_raw.csv"
    if not path.is_file():
        raise InputFileError(path, f"not found; run `make evaluate EVAL_OUT={eval_dir}` first")
    files, _, dice = read_raw(path)
    return {Path(f).name: float(v) for f, v in zip(files, np.nanmean(dice, axis=1), strict=True)}


def paired_difference(
    new: np.ndarray, base: np.ndarray, tie: float = 0.01, resamples: int = 10000, seed: int = 0
) -> PairedDifference:
    """Summarise ``new - base`` (two ``(cases,)`` arrays of per-case scores, same case order)."""
    new, base = np.asarray(new, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if new.shape != base.shape or new.ndim != 1 or new.size < 2:
        raise ValueError(f"need two equal-length 1-D arrays of at least 2 cases, got {new.shape} and {base.shape}")
    diff = new - base
    if np.allclose(diff, diff[0]):  # every case moved by the same amount: no spread to resample
        low = high = float(diff.mean())
        p_value = 1.0 if np.allclose(diff, 0.0) else float(stats.wilcoxon(diff).pvalue)
    else:
        ci = stats.bootstrap(
            (diff,), np.mean, n_resamples=resamples, method="BCa", random_state=np.random.default_rng(seed)
        ).confidence_interval
        low, high = float(ci.low), float(ci.high)
        p_value = float(stats.wilcoxon(diff).pvalue)
    return PairedDifference(
        cases=int(diff.size),
        mean_new=float(new.mean()),
        mean_base=float(base.mean()),
        difference=float(diff.mean()),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        better=int((diff > tie).sum()),
        worse=int((diff < -tie).sum()),
    )


def compare(
    new_dir: str | Path,
    base_dir: str | Path,
    tie: float = 0.01,
    seed: int = 0,
    levels_right: str | Path | None = None,
) -> PairedDifference:
    """Compare two evaluation folders on the cases they share (raises if they share fewer than two).

    With ``levels_right`` (the expert labels' folder), only the cases whose levels both name right count.
    """
    new, base = case_means(new_dir), case_means(base_dir)
    shared = sorted(new.keys() & base.keys())
    if levels_right is not None:
        offsets = [case_levels(d, levels_right) for d in (new_dir, base_dir)]
        shared = [c for c in shared if all(c in o and o[c].offset == 0 for o in offsets)]
    if len(shared) < 2:
        raise InputFileError(new_dir, f"shares {len(shared)} cases with {base_dir}; nothing to compare")
    return paired_difference(np.array([new[c] for c in shared]), np.array([base[c] for c in shared]), tie, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("new_eval_dir")
    parser.add_argument("base_eval_dir")
    parser.add_argument("--tie", type=float, default=0.01, help="a case counts as better/worse beyond this")
    parser.add_argument("--levels-right", metavar="LABELS_DIR", help="also compare the cases both name right")
    args = parser.parse_args(argv)
    try:
        print(compare(args.new_eval_dir, args.base_eval_dir, args.tie))
        if args.levels_right:
            result = compare(args.new_eval_dir, args.base_eval_dir, args.tie, levels_right=args.levels_right)
            print(f"levels named right in both: {result}")
    except InputFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
