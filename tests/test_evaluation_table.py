"""Per-vertebra table from MetricsSaver CSVs and the level-offset diagnostic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spine_seg.evaluation_table import level_shift, main, table
from spine_seg.phantom import make_phantom


def test_level_shift_detects_levels_named_one_too_high() -> None:
    _, label = make_phantom((200, 100), seed=4)
    assert level_shift(label, label, 6) == 0
    # the prediction calls the vertebra labelled k "k-1" (one level too high); the top one becomes background
    shifted = np.where(label > 1, label - 1, 0).astype(np.uint8)
    assert level_shift(shifted, label, 6) == 1
    assert level_shift(label, shifted, 6) == -1


def test_table_names_structures_and_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = "filename,class0,class1,mean\n"
    (tmp_path / "val_mean_dice_raw.csv").write_text(header + "a.nii.gz,0.9,0.5,0.7\nb.nii.gz,0.7,0.3,0.5\n")
    (tmp_path / "val_hd95_raw.csv").write_text(header + "a.nii.gz,2,10,6\nb.nii.gz,4,30,17\n")
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"labels": {"0": "background", "1": "L4", "2": "L5"}}))
    text, rows = table(tmp_path, dataset)
    assert [r["structure"] for r in rows] == ["L4", "L5", "mean"]
    assert rows[0]["dice_mean"] == 0.8 and rows[1]["dice_min"] == 0.3
    assert np.isclose(rows[2]["dice_mean"], 0.6) and np.isclose(rows[1]["hd95_median_px"], 20)
    assert "| L5 | 0.400 ± 0.100 | 0.300 |" in text
    assert main([str(tmp_path), "--dataset-json", str(dataset)]) == 0
    assert "2 validation cases" in capsys.readouterr().out
    assert (tmp_path / "per_vertebra.csv").read_text().splitlines()[1].startswith("L4,0.8")


def test_level_summary_counts_offsets_and_scores_the_right_cases(tmp_path: Path) -> None:
    from spine_seg.evaluation_table import level_summary
    from spine_seg.nifti_io import write_nifti

    _, label = make_phantom((200, 100), seed=4)
    shifted = np.where(label > 1, label - 1, 0).astype(np.uint8)
    (tmp_path / "pred").mkdir()
    for case, pred in (("a", label), ("b", shifted)):
        write_nifti(tmp_path / "labels" / f"{case}.nii.gz", label)
        write_nifti(tmp_path / "pred" / f"{case}_seg.nii.gz", pred)
    text = level_summary(tmp_path, tmp_path / "labels")
    whole = 2 * ((shifted > 0) & (label > 0)).sum() / ((shifted > 0).sum() + (label > 0).sum())
    assert f"whole-spine Dice (levels ignored): {(1 + whole) / 2:.3f}" in text
    assert "cases by level offset: +0: 1, +1: 1" in text
    assert "mean Dice of the 1 cases at offset 0: 1.000" in text
    # b lacks its last vertebra (a plausibility problem); a is the label itself
    expected = "flag 1 of 2 predictions: mean Dice 0.000, 1 with levels off; the 1 unflagged: 1.000, 0 with levels off"
    assert expected in text
