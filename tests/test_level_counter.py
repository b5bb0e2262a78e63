"""benchmarks/level_counter.py: its naming measure, its augmentation's row bookkeeping, and a run on phantoms."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from spine_seg.nifti_io import read_nifti, write_nifti


@pytest.fixture(scope="module")
def level_counter() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "level_counter.py"
    spec = importlib.util.spec_from_file_location("level_counter", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_naming_offsets_count_pitches(level_counter: ModuleType) -> None:
    expert = torch.tensor([[0.40, 0.46, 0.52, 0.58, 0.64, 0.70]] * 4)
    pred = expert + torch.tensor([[0.0], [0.06], [-0.12], [0.02]])  # 0, +1, -2 pitches, a third of one
    assert level_counter.naming_offsets(pred, expert).tolist() == [0, 1, -2, 0]


def test_augment_moves_the_rows_with_the_image(level_counter: ModuleType) -> None:
    torch.manual_seed(0)
    image = torch.zeros(32, 1, 256, 64)
    image[:, :, 76:78] = 1.0  # a bright band whose centre is row 77, i.e. (77 + 0.5) / 256 of the height
    rows = torch.full((32, 1), 77.5 / 256)
    moved, moved_rows = level_counter.augment(image, rows, shift=0.1)
    peak = moved[:, 0, :, 28:36].mean(2).argmax(1).float()
    expected = moved_rows[:, 0] * 256 - 0.5
    assert (expected - 77).abs().max() > 5  # the shift did move it
    assert (peak - expected).abs().max() <= 2.0


def test_runs_on_phantoms_and_scores_the_cascade(
    level_counter: ModuleType, make_challenge: Callable[..., Path], run_convert: Callable, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    run_convert(make_challenge("raw", n_train=10, n_test=0, shape=(160, 64)), data)
    meta = json.loads((data / "dataset.json").read_text())
    val = [c for c in meta["training"] if c["fold"] == 0]
    # a "cascade" that predicts the expert labels themselves names every validation case right
    (tmp_path / "eval" / "pred").mkdir(parents=True)
    for case in val:
        write_nifti(tmp_path / "eval" / "pred" / f"{case['id']}_seg.nii.gz", read_nifti(data / case["label"]))
    level_counter.main(["--dataset-json", str(data / "dataset.json"), "--eval-dir", str(tmp_path / "eval"),
                        "--grid", "64", "32", "--epochs", "2", "--every", "1"])
    out = capsys.readouterr().out
    assert len(re.findall(rf"epoch \d: named right \d+/{len(val)} validation", out)) == 2
    assert re.search(rf"position prior .*: \d+/{len(val)} named right; level counter: \d+/{len(val)}", out)
    assert f"cascade ({tmp_path / 'eval'}): {len(val)}/{len(val)} named right" in out
    table = [line for line in out.splitlines() if re.match(r"\s+(True|False) \|", line)]
    assert sum(int(line.rsplit("|", 1)[1]) for line in table) == len(val)
    assert all(line.split("|")[0].strip() == "True" for line in table)
