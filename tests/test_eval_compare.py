"""Paired comparison of two evaluation folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spine_seg.errors import InputFileError
from spine_seg.eval_compare import compare, main, paired_difference
from spine_seg.nifti_io import write_nifti
from spine_seg.phantom import make_phantom


def write_eval(folder: Path, cases: dict[str, tuple[float, float]]) -> Path:
    """A MetricsSaver-style ``val_mean_dice_raw.csv`` with two structures per case."""
    folder.mkdir()
    rows = [f"data/imagesTr/{name},{a},{b},{(a + b) / 2}" for name, (a, b) in cases.items()]
    (folder / "val_mean_dice_raw.csv").write_text("filename,class0,class1,mean\n" + "\n".join(rows) + "\n")
    return folder


def test_a_consistent_gain_has_an_interval_above_zero() -> None:
    base = np.random.default_rng(1).uniform(0.5, 0.9, 60)
    result = paired_difference(base + np.random.default_rng(2).uniform(0.015, 0.025, 60), base)
    assert result.cases == 60 and result.better == 60 and result.worse == 0
    assert 0.0 < result.ci_low < 0.02 < result.ci_high and result.p_value < 1e-6
    assert "better in 60, worse in 0" in str(result)


def test_a_gain_carried_by_one_case_is_not_significant() -> None:
    base = np.full(40, 0.7)
    new = base.copy()
    new[0] = 1.0  # one case flips, the other 39 are unchanged
    result = paired_difference(new, base)
    assert result.difference == pytest.approx(0.3 / 40)
    assert result.ci_low <= 0.0 and result.better == 1


def test_identical_evaluations_differ_by_nothing() -> None:
    scores = np.linspace(0.1, 0.9, 10)
    result = paired_difference(scores, scores)
    assert (result.difference, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_the_same_gain_in_every_case_has_a_point_interval() -> None:
    base = np.linspace(0.1, 0.9, 12)
    result = paired_difference(base + 0.02, base)
    assert result.ci_low == pytest.approx(0.02) and result.ci_high == pytest.approx(0.02), "no NaN interval"
    assert result.p_value < 0.01 and result.better == 12


def test_unequal_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference(np.ones(3), np.ones(4))


def test_compare_pairs_the_cases_the_folders_share(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = write_eval(tmp_path / "new", {"a.nii.gz": (0.9, 0.7), "b.nii.gz": (0.6, 0.6), "c.nii.gz": (0.1, 0.1)})
    base = write_eval(tmp_path / "base", {"a.nii.gz": (0.7, 0.7), "b.nii.gz": (0.6, 0.6), "z.nii.gz": (0.0, 0.0)})
    result = compare(new, base)
    assert result.cases == 2 and result.mean_new == pytest.approx(0.7) and result.mean_base == pytest.approx(0.65)
    assert (result.better, result.worse) == (1, 0)
    assert main([str(new), str(base)]) == 0
    assert "2 paired cases" in capsys.readouterr().out


def test_a_missing_evaluation_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_eval(tmp_path / "base", {"a.nii.gz": (0.7, 0.7), "b.nii.gz": (0.6, 0.6)})
    with pytest.raises(InputFileError, match="val_mean_dice_raw.csv"):
        compare(tmp_path / "absent", base)
    assert main([str(tmp_path / "absent"), str(base)]) == 2
    assert "absent/val_mean_dice_raw.csv: not found" in capsys.readouterr().err


def test_levels_right_keeps_only_the_cases_both_name_right(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, label = make_phantom((200, 100), seed=4)
    one_too_high = np.where(label > 1, label - 1, 0).astype(np.uint8)
    cases = {"a.nii.gz": (0.9, 0.9), "b.nii.gz": (0.2, 0.2), "c.nii.gz": (0.8, 0.6)}
    new = write_eval(tmp_path / "new", cases)
    base = write_eval(tmp_path / "base", {name: (0.5, 0.5) for name in cases})
    for name in cases:
        write_nifti(tmp_path / "labels" / name, label)
        pred_name = name.replace(".nii.gz", "_seg.nii.gz")
        write_nifti(base / "pred" / pred_name, label)
        write_nifti(new / "pred" / pred_name, one_too_high if name == "b.nii.gz" else label)
    assert compare(new, base).cases == 3
    result = compare(new, base, levels_right=tmp_path / "labels")  # b is one level off in the new evaluation
    assert result.cases == 2 and result.mean_new == pytest.approx(0.8) and result.mean_base == pytest.approx(0.5)
    assert main([str(new), str(base), "--levels-right", str(tmp_path / "labels")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("3 paired cases") and out[1].startswith("levels named right in both: 2 paired cases")
