"""Label audit: implausible expert outlines and the place of each case's levels against the set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spine_seg.label_audit import level_z, main, measure
from spine_seg.nifti_io import write_nifti

NAMES = ["T12", "L1", "L2", "L3", "L4", "L5"]


def stack(height: int = 500, top: int = 200, pitch: int = 30, body: int = 24, skip: int | None = None) -> np.ndarray:
    """Six stacked rectangular bodies, the first centred near row ``top + body / 2``; ``skip`` leaves one out."""
    label = np.zeros((height, 60), dtype=np.uint8)
    for k in range(6):
        if k != skip:
            label[top + k * pitch : top + k * pitch + body, 15:45] = k + 1
    return label


def test_plausible_stack_has_no_flags() -> None:
    geometry = measure(stack(), 6, NAMES)
    assert geometry.flags == ()
    assert geometry.pitch == pytest.approx(30.0)
    np.testing.assert_allclose(geometry.rows, 200 + 11.5 + 30 * np.arange(6))


def test_swallowed_vertebra_and_skipped_level_are_flagged() -> None:
    squeezed = stack()
    squeezed[290:310] = np.where(squeezed[290:310] == 4, 3, squeezed[290:310])  # L2 drawn over most of L3
    assert any("L3 area" in f for f in measure(squeezed, 6, NAMES).flags)
    gap = stack()
    gap[gap >= 4] = 0
    gap[stack(top=230) >= 4] = stack(top=230)[stack(top=230) >= 4]  # L3-L5 one vertebra lower: a level skipped
    assert "L2-L3 gap 2.00 x the median" in measure(gap, 6, NAMES).flags
    assert any("L4 missing" in f for f in measure(stack(skip=4), 6, NAMES).flags)


def test_level_z_measures_the_offset_in_vertebrae() -> None:
    cases = [measure(stack(), 6), measure(stack(), 6), measure(stack(top=230), 6), measure(stack(top=185), 6)]
    np.testing.assert_allclose(level_z(cases), [0.0, 0.0, 1.0, -0.5])


def test_cli_writes_the_csv_and_sets_offsets_against_level_z(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "eval" / "pred").mkdir(parents=True)
    cases = []
    for i, top in enumerate([200, 200, 200, 230]):
        write_nifti(tmp_path / "labelsTr" / f"{i}.nii.gz", stack(top=top))
        cases.append({"id": str(i), "label": f"labelsTr/{i}.nii.gz", "fold": 0})
    # case 3's expert levels sit one vertebra lower than the rest: a model that follows the set names them off
    write_nifti(tmp_path / "eval" / "pred" / "3_seg.nii.gz", stack(top=200))
    write_nifti(tmp_path / "eval" / "pred" / "0_seg.nii.gz", stack(top=200))
    labels = {"0": "background", **{str(k + 1): n for k, n in enumerate(NAMES)}}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels, "training": cases}))
    out = tmp_path / "audit.csv"
    assert main([str(tmp_path / "dataset.json"), "--eval-dir", str(tmp_path / "eval"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 of the 1 with levels named off, and 0 of the 1 named right" in text
    rows = out.read_text().splitlines()
    assert rows[0] == "id,fold,level_z,level_offset,flags"
    assert rows[4].startswith("3,0,1.000,-1,")  # the prediction calls the expert T12 "L1"
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such dataset.json" in capsys.readouterr().err
