"""benchmarks/vertebra_refine.py: its windows, augmentation, pasting back, and a run on phantoms."""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest
import torch

from spine_seg.evaluation_table import dice


@pytest.fixture(scope="module")
def refine(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("vertebra_refine")


def _spine() -> np.ndarray:
    """Three boxes, the last at the image's bottom-right corner so that its window leaves the image."""
    label = np.zeros((300, 140), np.uint8)
    label[40:80, 30:90], label[84:126, 34:96], label[270:300, 100:140] = 1, 2, 3
    return label


def test_windows_cut_and_paste_back(refine: ModuleType) -> None:
    label = _spine()
    found = refine.windows(label, 3, 1.6)
    assert found[1] == (60.0, 60.0, 96.0)  # box centre, 1.6 x its larger side (60 columns)
    for k, window in found.items():
        patch = refine.cut((label == k).astype(np.float32), window, 32, mode="nearest-exact")
        assert patch.shape == (1, 32, 32)
        assert dice(refine.paste(patch[0], window, label.shape) > 0.5, label == k) > 0.95  # windows at half scale


class _SameValue(torch.nn.Module):
    """Class 1 wherever the window has the value at its centre: draws back a label map given as the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, :, x.shape[2] // 2, x.shape[3] // 2][..., None, None]
        same = 1 - 8 * (x - centre).abs()  # > 0 within half a label step (0.125) of the centre value
        return torch.cat([-same, same, torch.zeros_like(x)], 1)


def test_refine_keeps_each_window_s_label(refine: ModuleType) -> None:
    label = _spine()
    image = label.astype(np.float32) / 4
    out = refine.refine(_SameValue(), image, label, 3, 1.6, 64, torch.device("cpu"))
    assert out.shape == label.shape and out.dtype == np.uint8
    for k in (1, 2, 3):
        assert dice(out == k, label == k) > 0.95
    swapped = np.choose(label, [0, 2, 1, 3]).astype(np.uint8)  # names 1 and 2 swapped: kept swapped
    assert dice(refine.refine(_SameValue(), image, swapped, 3, 1.6, 64, torch.device("cpu")) == 2, label == 1) > 0.95
    partial = np.where(label == 1, 0, label).astype(np.uint8)  # structure 1 not found: the others keep their names
    out = refine.refine(_SameValue(), image, partial, 3, 1.6, 64, torch.device("cpu"))
    assert not (out == 1).any() and dice(out == 2, label == 2) > 0.95 and dice(out == 3, label == 3) > 0.95


def test_augment_moves_image_and_target_together(refine: ModuleType) -> None:
    torch.manual_seed(0)
    size = 32
    big = int(refine.CACHE * size)
    target = torch.zeros(64, 1, big, big)
    target[:, :, 18:30, 20:28] = 1  # centred, 12 x 8
    target[:, :, 12:16, 30:38] = 2  # an asymmetric neighbour, so that a flip shows
    image = target.clamp(0, 1) * 0.9
    still, still_y = refine.augment(image, target, size, move=0.0)
    moved, moved_y = refine.augment(image, target, size, move=0.1)
    for x, y in ((still, still_y), (moved, moved_y)):
        inside = y == 1
        assert inside.flatten(1).any(1).all()
        assert x[inside].mean() > 0.8 and x[y == 0].mean() < 0.2  # the image follows the target
    grid = torch.arange(size, dtype=torch.float32)
    centres = torch.stack([((still_y == 1)[:, 0].float().sum(d) * grid).sum(1) / (still_y == 1)[:, 0].sum((1, 2))
                           for d in (2, 1)], 1)
    assert (centres - (size - 1) / 2).abs().max() < 1.0  # zoom, rotation and flip turn about the centre
    moved_centres = torch.stack([((moved_y == 1)[:, 0].float().sum(d) * grid).sum(1) / (moved_y == 1)[:, 0].sum((1, 2))
                                 for d in (2, 1)], 1)
    offset = (moved_centres - (size - 1) / 2).abs()
    assert offset.max() > 1.5 and offset.max() <= 0.1 * size + 1.0
    neighbour_right = ((still_y == 2)[:, 0].float() * grid).sum((1, 2)) > ((still_y == 2)[:, 0].sum((1, 2)) * size / 2)
    assert 0 < int(neighbour_right.sum()) < len(neighbour_right)  # flipped in some windows, not in all


def test_runs_on_phantoms_and_scores_the_cascade(
    refine: ModuleType, expert_cascade: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset_json, eval_dir, val = expert_cascade  # a "cascade" that predicts the expert labels themselves
    refine.main(["--dataset-json", str(dataset_json), "--eval-dir", str(eval_dir),
                 "--size", "32", "--features", "4", "4", "8", "8", "16", "4", "--epochs", "2", "--every", "1"])
    out = capsys.readouterr().out
    assert len(re.findall(r"epoch \d: training loss \d+\.\d+", out)) == 2
    n = len(val)
    for name in ("all", "named right by the cascade"):
        line = re.search(rf"{name}: refined against the cascade, {n} paired cases: mean Dice (\d\.\d+) against 1\.000, "
                         rf".*better in 0, worse in (\d+); expert windows refined (\d\.\d+)", out)
        assert line, out  # nothing beats the expert label itself
        assert line[1] == line[3]  # the cascade's windows are the expert ones here
