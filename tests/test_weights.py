"""Weight averaging over checkpoints of one run (bundle/scripts/weights.py, train.json's ``finalize``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet

from spine_seg.predict import DEFAULT_BUNDLE

sys.path.insert(0, str(DEFAULT_BUNDLE))
from scripts.best_weights import BestWeightsSaver  # noqa: E402
from scripts.weights import average_checkpoints, average_weights, load_weights  # noqa: E402


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
def test_both_stages_keep_their_best_weights_in_the_run_and_stage_2_alone_averages(
        configs: list[str], averaged: bool, bundle_config: Callable[..., ConfigParser]) -> None:
    """Each stage keeps its best-validation weights in ``run_dir``; ``finalize`` writes them to ``ckpt_dir``,
    for stage 2 averaged with the last epoch's (``models/model.pt``), for stage 1 as they are (``coarse.pt``)."""
    config = bundle_config(*configs)
    config["run_dir"], config["ckpt_dir"] = "/runs/x", "/models"
    assert config.get_parsed_content("average_best_last") is averaged
    best = config.get_parsed_content("best_ckpt")
    assert best == ("/runs/x/best_model.pt" if averaged else "/runs/x/best_coarse.pt")
    index = next(i for i, h in enumerate(config["validate"]["handlers"]) if h["_target_"].endswith("BestWeightsSaver"))
    saver = config.get_parsed_content(f"validate#handlers#{index}")
    assert (saver.path, saver.state_file) == (best, "/runs/x/best_metric.json")
    assert saver.network is config.get_parsed_content("network")


def test_finalize_averages_once_and_never_in_evaluation(bundle_config: Callable[..., ConfigParser]) -> None:
    """Under DDP rank 0 alone averages, before the process group goes; evaluate.json runs on top of train.json
    and must not inherit the step that rewrites models/model.pt."""
    single = bundle_config("train.json")["finalize"]
    assert len(single) == 1 and single[0].startswith("$@rank == 0 and @average_checkpoints(")
    ddp = bundle_config("train.json", "multi_gpu_train.json")
    assert ddp["finalize"][0] == single[0] and "destroy_process_group" in ddp["finalize"][-1]
    assert ddp["rank"] == "$torch.distributed.get_rank()"
    assert bundle_config("train.json", "evaluate.json")["finalize"] == []
    # stage 3 adds its level sizes after the same averaging step, before the process group goes under DDP
    refine = bundle_config("train.json", "train_refine.json")["finalize"]
    assert refine[0] == single[0] and len(refine) == 2 and "@write_level_sizes(" in refine[1]
    refine_ddp = bundle_config("train.json", "train_refine.json", "multi_gpu_train.json")["finalize"]
    assert refine_ddp[:2] == refine and "destroy_process_group" in refine_ddp[-1]


def validated(saver: BestWeightsSaver, net: torch.nn.Module, epoch: int, dice: float) -> None:
    """One validation at ``epoch`` scoring ``dice``, as the evaluator reports it to its handlers."""
    with torch.no_grad():
        next(net.parameters()).fill_(epoch)  # each epoch's weights can be told apart
    engine = SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": dice}, key_metric_name="val_mean_dice",
                                                   epoch=epoch))
    saver(engine)  # type: ignore[arg-type]


def saved_epoch(path: Path) -> int:
    return int(next(iter(torch.load(path, weights_only=True).values())).flatten()[0])


def test_best_weights_survive_a_resumed_run(tmp_path: Path) -> None:
    """A resumed run compares with the best score of the epochs before it (MONAI's CheckpointSaver forgets it
    and overwrites the best file at the first validation after resuming); a fresh run starts over."""
    net = torch.nn.Linear(2, 2)
    best, state = tmp_path / "best_model.pt", tmp_path / "best_metric.json"
    saver = BestWeightsSaver(net, str(best), str(state))
    for epoch, dice in [(1, 0.5), (2, 0.7), (3, 0.6), (4, float("nan"))]:
        validated(saver, net, epoch, dice)
    assert saved_epoch(best) == 2
    assert json.loads(state.read_text()) == {"metric": 0.7, "epoch": 2, "path": str(best)}

    resumed = BestWeightsSaver(net, str(best), str(state), resume=True)
    validated(resumed, net, 5, 0.65)
    assert saved_epoch(best) == 2, "a lower score after resuming must not replace the best weights"
    validated(resumed, net, 6, 0.75)
    assert saved_epoch(best) == 6 and json.loads(state.read_text())["epoch"] == 6

    fresh = BestWeightsSaver(net, str(best), str(state))
    validated(fresh, net, 1, 0.1)
    assert saved_epoch(best) == 1 and json.loads(state.read_text())["metric"] == 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_metric.json", "best_model.pt"]


def test_a_resumed_run_without_a_score_saves_its_first_validation(tmp_path: Path) -> None:
    """Runs started before the score file existed resume as MONAI's saver did: the first validation is kept."""
    net = torch.nn.Linear(2, 2)
    saver = BestWeightsSaver(torch.nn.DataParallel(net), str(tmp_path / "best.pt"), str(tmp_path / "s.json"),
                             resume=True)
    validated(saver, net, 7, 0.2)
    assert saved_epoch(tmp_path / "best.pt") == 7
    assert set(torch.load(tmp_path / "best.pt", weights_only=True)) == {"weight", "bias"}, "wrapper unwrapped"
