"""The run's resumable checkpoint (bundle/scripts/checkpoint.py, train.json's ``train#checkpointer``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from spine_seg.predict import DEFAULT_BUNDLE

sys.path.insert(0, str(DEFAULT_BUNDLE))
from scripts.checkpoint import LatestCheckpointSaver, latest_checkpoint  # noqa: E402


def train(run_dir: Path, epochs: int, net: torch.nn.Module | None = None) -> tuple[Engine, torch.nn.Module]:
    """A trainer whose network's weight equals the epoch, saved by a LatestCheckpointSaver, run to ``epochs``
    (resumed from the run folder's latest checkpoint, as train.json does)."""
    net = net or torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine: Engine, batch: int) -> None:
        with torch.no_grad():
            next(net.parameters()).fill_(engine.state.epoch)

    trainer = Engine(step)
    LatestCheckpointSaver(str(run_dir), {"model": net, "optimizer": optimizer, "trainer": trainer}).attach(trainer)
    if resume := latest_checkpoint(str(run_dir)):
        trainer.load_state_dict(torch.load(resume, weights_only=True)["trainer"])
    trainer.run([0], max_epochs=epochs)
    return trainer, net


def test_one_checkpoint_is_kept_and_resumed_from(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(run_dir, 3)
    assert sorted(os.listdir(run_dir)) == ["checkpoint_epoch=3.pt"]
    ckpt = torch.load(run_dir / "checkpoint_epoch=3.pt", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "trainer"} and ckpt["trainer"]["iteration"] == 3
    assert float(ckpt["model"]["weight"]) == 3

    # left by earlier runs: checkpoints MONAI's saver forgot on resuming, a killed write's temporary file; and
    # files that are not checkpoints of this run
    for name in ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", ".checkpoint_epoch=4.pt.x1y2z3.tmp"]:
        (run_dir / name).write_bytes(b"old")
    others = ["best_model.pt", "best_metric.json", "checkpoint_epoch=2.pt.bak", "notes_checkpoint_epoch=1.pt"]
    for name in others:
        (run_dir / name).write_bytes(b"keep")
    trainer, net = train(run_dir, 5)
    assert trainer.state.epoch == 5 and float(net.weight) == 5
    assert sorted(os.listdir(run_dir)) == sorted(["checkpoint_epoch=5.pt", *others])
    assert latest_checkpoint(str(run_dir)) == str(run_dir / "checkpoint_epoch=5.pt")


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new checkpoint is complete before the old one goes: a write that fails (disk full, the process
    stopped) leaves the previous checkpoint to resume from, and no partial file."""
    train(tmp_path, 2)
    before = (tmp_path / "checkpoint_epoch=2.pt").read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        train(tmp_path, 3)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=2.pt"]
    assert (tmp_path / "checkpoint_epoch=2.pt").read_bytes() == before
    trainer, _ = train(tmp_path, 3)
    assert trainer.state.epoch == 3 and sorted(os.listdir(tmp_path)) == ["checkpoint_epoch=3.pt"]


def test_latest_is_the_highest_epoch_not_the_newest_file(tmp_path: Path) -> None:
    """A copied run folder does not keep its files' times: the epoch in the name decides."""
    assert latest_checkpoint(str(tmp_path / "none")) == "" and latest_checkpoint(str(tmp_path)) == ""
    for name in ["checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt", "checkpoint_epoch=11.pt.bak"]:
        (tmp_path / name).write_bytes(b"")
    os.utime(tmp_path / "checkpoint_epoch=10.pt", (0, 0))
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint_epoch=10.pt")


def test_a_wrapped_network_is_saved_unwrapped(tmp_path: Path) -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    train(tmp_path, 1, torch.nn.DataParallel(net))
    assert set(torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)["model"]) == {"weight"}
