"""benchmarks/level_counter.py: its naming measure, its augmentation's row bookkeeping, and a run on phantoms."""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType

import pytest
import torch


@pytest.fixture(scope="module")
def level_counter(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("level_counter")


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
    level_counter: ModuleType, expert_cascade: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset_json, eval_dir, val = expert_cascade  # a "cascade" that predicts the expert labels themselves
    level_counter.main(["--dataset-json", str(dataset_json), "--eval-dir", str(eval_dir),
                        "--grid", "64", "32", "--epochs", "2", "--every", "1"])
    out = capsys.readouterr().out
    assert len(re.findall(rf"epoch \d: named right \d+/{len(val)} validation", out)) == 2
    assert re.search(rf"position prior .*: \d+/{len(val)} named right; level counter: \d+/{len(val)}", out)
    assert f"cascade ({eval_dir}): {len(val)}/{len(val)} named right" in out
    table = [line for line in out.splitlines() if re.match(r"\s+(True|False) \|", line)]
    assert sum(int(line.rsplit("|", 1)[1]) for line in table) == len(val)
    assert all(line.split("|")[0].strip() == "True" for line in table)
