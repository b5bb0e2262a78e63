"""The weights shipped in bundle/models (coarse.pt, model.pt, refine.pt), on a real radiograph when the shared data
is present."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from data_prep.cases import discover
from data_prep.convert import assign_folds
from spine_seg.anatomy import order_problems
from spine_seg.label_layout import to_class_map
from spine_seg.mat_io import read_mask
from spine_seg.predict import DEFAULT_BUNDLE, predict

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "aasce"


@pytest.mark.parametrize(
    ("weights", "net_id", "grid", "classes"),
    [("model.pt", "network_def", "spatial_size", 7), ("coarse.pt", "coarse_network_def", "coarse_spatial_size", 7),
     ("refine.pt", "refine_network_def", "refine_size", 3)],
)
def test_shipped_weights_load_into_the_bundle_network(weights: str, net_id: str, grid: str, classes: int,
                                                      bundle_config: Callable[..., ConfigParser]) -> None:
    path = DEFAULT_BUNDLE / "models" / weights
    assert path.is_file(), f"{path} is missing: the bundle must ship trained weights (make train)"
    parser = bundle_config("inference.json")
    network = parser.get_parsed_content(net_id)
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = network.load_state_dict(state.get("model", state), strict=True)
    assert not missing and not unexpected
    size = parser[grid] if isinstance(parser[grid], list) else [parser[grid]] * 2  # refine_size: square windows
    out = network.eval()(torch.rand(1, 1, *size))
    assert out.shape == (1, classes, *size)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real radiographs not present at {REAL}")
def test_real_training_radiograph_is_segmented_in_order(tmp_path: Path) -> None:
    """The first case of the shipped model's training folds (1-4); validation accuracy is in bundle/docs."""
    found = discover(REAL)
    folds = assign_folds([c.case_id for c in found.training])
    case = next(c for c in found.training if folds[c.case_id] != 0)
    report = predict([case.image], tmp_path, structure_names=["T12", "L1", "L2", "L3", "L4", "L5"], progress=False)
    assert not report.bad, report.bad
    pred = np.load(tmp_path / f"{case.case_id}.npy")
    truth = read_mask(case.mask)
    assert pred.shape == truth.shape and pred.dtype == np.uint8
    assert (pred.sum(-1) == 1).all(), "background-last: exactly one channel per pixel"
    class_map = to_class_map(pred, "background-last")
    assert order_problems(class_map, 6) == [], "six non-empty vertebrae, top to bottom in label order"
    dice = [
        2 * np.logical_and(pred[..., k], truth[..., k]).sum() / (pred[..., k].sum() + truth[..., k].sum())
        for k in range(6)
    ]
    assert np.mean(dice) >= 0.8, f"per-vertebra Dice {np.round(dice, 3).tolist()}"
    assert (tmp_path / f"{case.case_id}.png").stat().st_size > 0


def test_demo_on_phantoms_writes_masks_overlays_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``make demo`` where the shared data is absent: generated phantoms, said so, through the shipped weights."""
    from spine_seg.batch_report import CHECKS_FILE
    from spine_seg.demo import main as demo_main

    out = tmp_path / "demo"
    assert demo_main(["--raw", str(tmp_path / "absent"), "--out", str(out), "--count", "2"]) == 0
    printed = capsys.readouterr().out
    assert "PHANTOM" in printed and str(out / CHECKS_FILE) in printed and "2 cases: " in printed
    npys = sorted(out.glob("*.npy"))
    assert len(npys) == 2
    for npy in npys:
        pred = np.load(npy)
        assert pred.shape == (1024, 512, 7) and pred.dtype == np.uint8 and (pred.sum(-1) == 1).all()
        assert npy.with_suffix(".png").stat().st_size > 0
    rows = (out / CHECKS_FILE).read_text().splitlines()
    assert rows[0] == "case,status,detail" and sorted(r.split(",")[0] for r in rows[1:]) == [p.stem for p in npys]
    assert all(r.split(",")[1] in ("ok", "check") for r in rows[1:])
