"""``make report`` (spine_seg.report): learning curve, table and the best / median / worst validation cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from spine_seg.nifti_io import write_nifti
from spine_seg.phantom import make_phantom
from spine_seg.report import main, scalars

# Per-case Dice of six vertebrae; case 004's label is empty, so MONAI scores none of its vertebrae (NaN).
DICE = {"001": 0.9, "002": 0.2, "003": 0.6, "004": float("nan"), "005": 0.7, "006": 0.4}


def eval_folder(root: Path) -> tuple[Path, Path]:
    """``(eval_dir, dataset.json)``: images, labels and predictions of the cases in :data:`DICE`."""
    for sub in ("imagesTr", "labelsTr", "eval/pred"):
        (root / sub).mkdir(parents=True)
    rows = {"dice": [], "hd95": []}
    for i, (case, score) in enumerate(DICE.items()):
        image, label = make_phantom((120, 60), seed=i)
        write_nifti(root / "imagesTr" / f"{case}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
        write_nifti(root / "eval" / "pred" / f"{case}_seg.nii.gz", label)
        rows["dice"].append(f"{root / 'imagesTr' / case}.nii.gz," + ",".join([str(score)] * 7))
        rows["hd95"].append(f"{root / 'imagesTr' / case}.nii.gz," + ",".join(["3.0"] * 7))
    header = "filename," + ",".join(f"class{k}" for k in range(6)) + ",mean\n"
    for name, body in rows.items():
        (root / "eval" / f"val_{'mean_dice' if name == 'dice' else name}_raw.csv").write_text(header + "\n".join(body))
    labels = {"0": "background", **{str(k): n for k, n in enumerate(["T12", "L1", "L2", "L3", "L4", "L5"], 1)}}
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root / "eval", root / "dataset.json"


def test_report_picks_best_median_and_worst_scored_cases(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    eval_dir, dataset_json = eval_folder(tmp_path)
    with SummaryWriter(str(tmp_path / "run")) as writer:
        for step in range(1, 21):
            writer.add_scalar("train_loss", 1.0 / step, step)
        for epoch in (2, 4):
            writer.add_scalar("val_mean_dice", 0.3 * epoch / 2, epoch)
    assert list(scalars(tmp_path / "run", "val_mean_dice")[0]) == [2, 4]
    out = tmp_path / "figures"
    assert main(["--eval-dir", str(eval_dir), "--run-dir", str(tmp_path / "run"), "--refine-run-dir",
                 str(tmp_path / "run"), "--dataset-json", str(dataset_json), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "(learning_curve.png)" in report and "(learning_curve_refine.png)" in report
    assert "best: case 001, mean Dice 0.900" in report and "worst: case 002, mean Dice 0.200" in report
    assert "median: case 003, mean Dice 0.600" in report, "of the five scored cases; 004 has no score"
    assert "004" not in report and "| T12 |" in report
    for name in ("learning_curve", "learning_curve_refine", "case_best", "case_median", "case_worst"):
        assert Image.open(out / f"{name}.png").size[0] > 100
    assert "report written to" in capsys.readouterr().out


def test_report_without_an_evaluation_or_a_training_log_names_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    eval_dir, dataset_json = eval_folder(tmp_path)
    (tmp_path / "run").mkdir()
    out = tmp_path / "figures"

    def report(eval_dir: Path) -> int:
        return main(["--eval-dir", str(eval_dir), "--run-dir", str(tmp_path / "run"), "--dataset-json",
                     str(dataset_json), "--out", str(out)])

    assert report(tmp_path / "no-eval") == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'no-eval' / 'val_mean_dice_raw.csv'}: no such file: run "
                                       "`make evaluate` first (EVAL_OUT= names its folder)\n")
    assert report(eval_dir) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'run'}: no training log (TensorBoard event files) here: "
                                       "train with `make train` first (RUN_DIR= names its folder)\n")
    assert not out.exists(), "nothing written"
    out.mkdir()
    (out / "learning_curve.png").write_bytes(b"a curve drawn where the run was")
    assert main(["--eval-dir", str(eval_dir), "--run-dir", str(tmp_path / "run"), "--dataset-json",
                 str(dataset_json), "--out", str(out), "--skip-missing-curves"]) == 0
    assert f"note: {tmp_path / 'run'}: no training log" in capsys.readouterr().out
    assert (out / "learning_curve.png").read_bytes() == b"a curve drawn where the run was", "kept as it is"
    assert Image.open(out / "case_best.png").size[0] > 100, "the rest is drawn"
