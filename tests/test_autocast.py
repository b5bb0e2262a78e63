"""bfloat16 autocast on the CPU for training (bundle/scripts/autocast.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet

from spine_seg.predict import DEFAULT_BUNDLE

sys.path.insert(0, str(DEFAULT_BUNDLE))
from scripts.autocast import AutocastInferer, cpu_has_bf16  # noqa: E402


def conv_dtypes(net: torch.nn.Module, inferer: AutocastInferer, x: torch.Tensor) -> tuple[set, torch.Tensor]:
    """The dtypes the network's convolutions computed in, and the inferer's output."""
    seen: set = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    out = inferer(x, net)
    for h in hooks:
        h.remove()
    return seen, out


def net_and_input() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return BasicUNet(2, 1, 7, features=(8, 8, 16, 32, 64, 8)), torch.rand(2, 1, 64, 32)


def test_enabled_runs_the_convolutions_in_bf16_and_returns_float32() -> None:
    net, x = net_and_input()
    seen, out = conv_dtypes(net, AutocastInferer(enabled=True), x)
    assert seen == {torch.bfloat16}
    assert out.dtype == torch.float32 and out.shape == (2, 7, 64, 32)
    _, full = conv_dtypes(net, AutocastInferer(enabled=False), x)
    # bf16 keeps 8 significant bits: the logits differ by well under a fifth of their spread (here ~8 %)
    assert (out - full).abs().max() < 0.2 * full.std()
    assert torch.corrcoef(torch.stack([out.flatten(), full.flatten()]))[0, 1] > 0.999


def test_disabled_is_plain_float32() -> None:
    net, x = net_and_input()
    seen, out = conv_dtypes(net, AutocastInferer(enabled=False), x)
    assert seen == {torch.float32}
    torch.testing.assert_close(out, net(x))


def test_default_follows_the_cpu_and_gradients_stay_float32() -> None:
    net, x = net_and_input()
    inferer = AutocastInferer()
    assert inferer.enabled is cpu_has_bf16() and isinstance(cpu_has_bf16(), bool)
    inferer(x, net).mean().backward()
    assert {p.grad.dtype for p in net.parameters()} == {torch.float32}


@pytest.mark.parametrize("enabled", [True, False])
def test_non_tensor_outputs_pass_through(enabled: bool) -> None:
    out = AutocastInferer(enabled=enabled)(torch.ones(2), lambda t: {"sum": t.sum()})
    assert out == {"sum": torch.tensor(2.0)}


@pytest.mark.parametrize(("configs", "expected"), [(["train.json"], cpu_has_bf16()),
                                                   (["train.json", "train_coarse.json"], False)])
def test_bundle_trains_stage_2_in_bf16_where_the_cpu_has_it_and_stage_1_in_float32(
        configs: list[str], expected: bool, bundle_config: Callable[..., ConfigParser]) -> None:
    parser = bundle_config(*configs)
    inferer = parser.get_parsed_content("train#inferer")
    assert isinstance(inferer, AutocastInferer) and inferer.enabled is expected


@pytest.mark.parametrize(("given", "expected"), [("false", False), ("False", False), ("0", False), ("true", True),
                                                 ("TRUE", True), (False, False), (1, True)])
def test_command_line_strings_are_read_not_truth_tested(given: object, expected: bool) -> None:
    assert AutocastInferer(enabled=given).enabled is expected


def test_unreadable_switch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"cpu_bf16\): Got \"maybe\", expected"):
        AutocastInferer(enabled="maybe")
