"""Weight averaging over checkpoints of one run (bundle/scripts/average_weights.py, train.json's ``finalize``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet

from spine_seg.predict import DEFAULT_BUNDLE

sys.path.insert(0, str(DEFAULT_BUNDLE))
from scripts.average_weights import average_checkpoints, average_weights, load_weights  # noqa: E402


def net_state(seed: int) -> dict[str, torch.Tensor]:
    """A small BasicUNet's weights, with BatchNorm statistics and counters that differ between seeds (the bundle's
    networks use instance norm, which keeps none, but averaging must not break a network that does)."""
    torch.manual_seed(seed)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4), norm="batch")
    net.train()
    net(torch.rand(2, 1, 32, 32) * (seed + 1))  # updates running_mean/var and num_batches_tracked
    if seed:
        net(torch.rand(2, 1, 32, 32))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_floats_are_averaged_and_counters_taken_from_the_last() -> None:
    a, b = net_state(0), net_state(1)
    mean = average_weights([a, b])
    assert mean.keys() == a.keys()
    ints = [k for k in a if not a[k].is_floating_point()]
    assert ints and all(k.endswith("num_batches_tracked") for k in ints)
    for k, v in mean.items():
        assert v.dtype == a[k].dtype and v.shape == a[k].shape
        if v.is_floating_point():
            torch.testing.assert_close(v, (a[k] + b[k]) / 2)
        else:
            assert torch.equal(v, b[k]) and not torch.equal(v, a[k])
    running = next(k for k in a if k.endswith("running_var"))
    assert not torch.equal(a[running], b[running]), "the BatchNorm statistics are averaged too"


def test_mismatched_weights_are_refused() -> None:
    a = net_state(0)
    with pytest.raises(ValueError, match="different tensors"):
        average_weights([a, {k: v for k, v in a.items() if "final" not in k}])
    first = next(iter(a))
    with pytest.raises(ValueError, match=f"shape of \\['{first}'\\]"):
        average_weights([a, {**a, first: torch.zeros(1)}])
    with pytest.raises(ValueError, match="no weights"):
        average_weights([])


def test_checkpoints_average_to_a_bare_state_dict_with_stable_bytes(tmp_path: Path) -> None:
    """The best-validation file (a bare state_dict) and a training checkpoint (``model`` entry and more) both load;
    the result is a bare state_dict, and the same inputs write the same bytes (CI can compare files)."""
    best, last = tmp_path / "best_model.pt", tmp_path / "checkpoint_epoch=3.pt"
    torch.save(net_state(0), best)
    torch.save({"model": net_state(1), "optimizer": {"state": {}, "param_groups": []}}, last)
    out = tmp_path / "models" / "model.pt"
    out.parent.mkdir()
    assert average_checkpoints([best, last], out) == str(out)
    first = out.read_bytes()
    saved = torch.load(out, weights_only=True)
    expected = average_weights([net_state(0), net_state(1)])
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    average_checkpoints([best, last], out)
    assert out.read_bytes() == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.pt"], "no temporary file is left"


def test_a_bad_input_names_its_file_and_leaves_the_output(tmp_path: Path) -> None:
    good, bad, out = tmp_path / "good.pt", tmp_path / "bad.pt", tmp_path / "model.pt"
    torch.save(net_state(0), good)
    torch.save({"model": "not weights"}, bad)
    out.write_bytes(b"earlier weights")
    with pytest.raises(ValueError, match="bad.pt: not a network state_dict"):
        average_checkpoints([good, bad], out)
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.pt")
    assert out.read_bytes() == b"earlier weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "good.pt", "model.pt"]


@pytest.mark.parametrize(("configs", "averaged"),
                         [(["train.json"], True), (["train.json", "train_coarse.json"], False)])
def test_stage_2_alone_averages_and_keeps_its_best_weights_in_the_run(
        configs: list[str], averaged: bool, bundle_config: Callable[..., ConfigParser]) -> None:
    """Stage 2 keeps its best-validation weights in ``run_dir`` and ``finalize`` writes the average to
    ``models/model.pt``; stage 1 writes its best weights to ``models/coarse.pt`` as before."""
    config = bundle_config(*configs)
    config["run_dir"], config["ckpt_dir"] = "/runs/x", "/models"
    assert config.get_parsed_content("average_best_last") is averaged
    best = config.get_parsed_content("best_ckpt")
    assert best == ("/runs/x/best_model.pt" if averaged else "/models/coarse.pt")
    saver = next(h for h in config["validate"]["handlers"] if h["_target_"] == "CheckpointSaver")
    assert saver["save_dir"] == "$os.path.dirname(@best_ckpt)"
    assert saver["key_metric_filename"] == "$os.path.basename(@best_ckpt)"


def test_finalize_averages_once_and_never_in_evaluation(bundle_config: Callable[..., ConfigParser]) -> None:
    """Under DDP rank 0 alone averages, before the process group goes; evaluate.json runs on top of train.json
    and must not inherit the step that rewrites models/model.pt."""
    single = bundle_config("train.json")["finalize"]
    assert len(single) == 1 and single[0].startswith("$@rank == 0 and @average_best_last and")
    ddp = bundle_config("train.json", "multi_gpu_train.json")
    assert ddp["finalize"][0] == single[0] and "destroy_process_group" in ddp["finalize"][-1]
    assert ddp["rank"] == "$torch.distributed.get_rank()"
    assert bundle_config("train.json", "evaluate.json")["finalize"] == []
