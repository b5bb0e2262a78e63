"""The MONAI bundle end to end on phantom radiographs: train, resume, evaluate, infer, export, DDP."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from data_prep.convert import Options, convert
from spine_seg.batch_report import CHECKS_FILE
from spine_seg.dicom_io import read_radiograph
from spine_seg.evaluation_table import table as evaluation_table
from spine_seg.export import ExportFormat, export_dir
from spine_seg.model_export import build_network, export_model
from spine_seg.nifti_io import read_nifti
from spine_seg.phantom import write_challenge_folder
from spine_seg.predict import DEFAULT_BUNDLE as BUNDLE
from spine_seg.predict import checkpoint_classes, predict

sys.path.insert(0, str(BUNDLE))
from scripts.spine_crop import CoarseSpineMaskd  # noqa: E402

REPO = BUNDLE.parent
CONFIGS = BUNDLE / "configs"
# Small grids and short schedules: phantoms are simple, CI has two CPU cores.
SCHEDULE = ["--num_workers", "0", "--batch_size", "4", "--val_interval", "1"]
SMALL = ["--spatial_size", "[64,32]", *SCHEDULE]
SMALL_COARSE = ["--spatial_size", "[96,48]", *SCHEDULE]
SMALL_REFINE = ["--refine_size", "32", *SCHEDULE]
TRAIN_REFINE = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'train_refine.json'}']"


def bundle_run(*args: str, cwd: Path = REPO, timeout: int = 600) -> str:
    """Run ``python -m monai.bundle ARGS``; return stdout+stderr, failing the test on a non-zero exit."""
    cmd = [sys.executable, "-m", "monai.bundle", *args, "--logging_file", str(CONFIGS / "logging.conf")]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{log[-4000:]}"
    return log


def mean_dice(metrics_dir: Path) -> float:
    rows = dict(line.split(",") for line in (metrics_dir / "metrics.csv").read_text().split())
    return float(rows["val_mean_dice"])


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 training + 2 test phantom radiographs of assorted sizes, converted to NIfTI + dataset.json."""
    root = tmp_path_factory.mktemp("phantom")
    shapes = [(192 + 8 * (i % 5), 96 + 6 * (i % 3)) for i in range(22)]
    raw = write_challenge_folder(root / "raw", n_train=20, n_test=2, shapes=shapes, seed=3)
    report = convert(raw, root / "data", structure_names=["T12", "L1", "L2", "L3", "L4", "L5"], progress=False)
    assert not report.bad
    return root / "data"


@pytest.fixture(scope="module")
def trained(phantom_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """The three stages trained briefly through ``python -m monai.bundle run training`` (the design card's
    command): the coarse whole-image network (``train.json`` + ``train_coarse.json``), the fine one on the crops,
    and the per-vertebra one on windows around the expert vertebrae (``train.json`` + ``train_refine.json``)."""
    work = tmp_path_factory.mktemp("train")
    common = ["--dataset_dir", str(phantom_data), "--ckpt_dir", str(work / "models"), "--max_epochs", "16",
              "--learning_rate", "0.01"]
    coarse_log = bundle_run(
        "run", "training", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'train_coarse.json'}']",
        "--run_dir", str(work / "coarse"), *common, *SMALL_COARSE,
    )
    log = bundle_run("run", "training", "--config_file", str(CONFIGS / "train.json"), "--run_dir", str(work / "run"),
                     *common, *SMALL)
    refine_log = bundle_run("run", "training", "--config_file", TRAIN_REFINE, "--run_dir", str(work / "refine"),
                            *common, *SMALL_REFINE)
    return {"work": work, "log": coarse_log + log + refine_log, "fine_log": log, "ckpt": work / "models" / "model.pt",
            "coarse": work / "models" / "coarse.pt", "refine": work / "models" / "refine.pt"}


def cascade_args(trained: dict) -> list[str]:
    """Overrides that point inference/evaluation at the test's own stages 1 and 3 and grids."""
    return ["--coarse_ckpt_path", str(trained["coarse"]), "--coarse_spatial_size", "[96,48]", "--spatial_size",
            "[64,32]", "--refine_ckpt_path", str(trained["refine"]), "--refine_size", "32"]


def evaluate(phantom_data: Path, trained: dict, ckpt: Path, out: Path, *overrides: str) -> float:
    """``train.json`` + ``evaluate.json`` with ``ckpt`` as the fine stage (and ``overrides``); the validation mean
    Dice."""
    bundle_run(
        "run", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']",
        "--dataset_dir", str(phantom_data), "--ckpt_path", str(ckpt), "--output_dir", str(out), *SCHEDULE,
        *cascade_args(trained), *overrides,
    )
    return mean_dice(out)


@pytest.mark.parametrize("net_id", ["network_def", "coarse_network_def", "refine_network_def"])
def test_training_and_inference_configs_build_the_same_networks(
        net_id: str, bundle_config: Callable[..., ConfigParser]) -> None:
    """The standalone inference.json repeats train.json's three networks: their weights must fit each other."""
    trained = {k: v.shape for k, v in bundle_config("train.json").get_parsed_content(net_id).state_dict().items()}
    served = {k: v.shape for k, v in build_network(BUNDLE, net_id).state_dict().items()}
    assert trained == served


@pytest.mark.parametrize("key", ["spatial_size", "coarse_spatial_size", "crop_margins", "num_classes", "refine_ratio",
                                 "refine_size"])
def test_training_and_inference_configs_use_the_same_grids(
        key: str, bundle_config: Callable[..., ConfigParser]) -> None:
    """The weights only fit the grids and crop they were trained on: inference.json must repeat train.json's."""
    trained, served = bundle_config("train.json"), bundle_config("inference.json")
    assert trained.get_parsed_content(key) == served.get_parsed_content(key)


@pytest.mark.parametrize("configs", [["inference.json"], ["train.json", "evaluate.json"]], ids=["infer", "evaluate"])
def test_inference_caps_onednn_primitive_cache(
        configs: list[str], bundle_config: Callable[..., ConfigParser], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """oneDNN caches a kernel per input shape, and every radiograph has its own size: without the cap a long
    CPU run keeps growing (see bundle/docs, "Inference cost"). A value the user has set is kept."""
    def initialize() -> None:
        config = bundle_config(*configs)
        config["output_dir"] = str(tmp_path)  # evaluate's initialize makes it
        config.get_parsed_content("initialize")

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    initialize()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "32"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")
    initialize()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "8"


@pytest.mark.parametrize(("configs", "prefix"),
                         [(["inference.json"], ""), (["train.json", "evaluate.json"], "validate#")],
                         ids=["infer", "evaluate"])
def test_loader_runs_stage_1_in_process_on_cuda(configs: list[str], prefix: str,
                                                bundle_config: Callable[..., ConfigParser]) -> None:
    """Stage 1 runs inside these loaders' preprocessing, on ``device``. CUDA cannot be used in a forked loader
    worker once the parent has used it, so on a GPU the loader must work in-process; on the CPU it keeps the
    bundle's ``num_workers``."""
    def workers(device: str | torch.device, num_workers: int) -> int:
        config = bundle_config(*configs)
        config["device"], config["num_workers"] = device, num_workers
        return config.get_parsed_content(f"{prefix}dataloader#num_workers")

    transforms = bundle_config(*configs).get_parsed_content(f"{prefix}dataset#transform").transforms
    assert any(isinstance(t, CoarseSpineMaskd) for t in transforms)
    assert workers("cpu", 2) == 2
    assert workers("cuda", 2) == workers("cuda:1", 2) == 0
    assert workers(torch.device("cuda", 0), 2) == 0


def test_inference_datalist_is_dataset_json_test_cases(bundle_config: Callable[..., ConfigParser],
                                                        tmp_path: Path) -> None:
    """Cases in dataset.json's test list, not whatever lies in imagesTs/ (e.g. a case whose DICOM went bad
    since an earlier conversion); a folder of NIfTIs without a dataset.json is globbed."""
    (tmp_path / "imagesTs").mkdir()
    for name in ("501.nii.gz", "stale.nii.gz"):
        (tmp_path / "imagesTs" / name).touch()

    def datalist() -> list[dict[str, str]]:
        config = bundle_config("inference.json")
        config["dataset_dir"] = str(tmp_path)
        return config.get_parsed_content("datalist")

    assert [Path(d["image"]).name for d in datalist()] == ["501.nii.gz", "stale.nii.gz"]
    (tmp_path / "dataset.json").write_text(json.dumps({"test": [{"id": "501", "image": "imagesTs/501.nii.gz"}]}))
    assert datalist() == [{"image": str(tmp_path / "imagesTs" / "501.nii.gz")}]


def test_training_beats_untrained_model(phantom_data: Path, trained: dict, tmp_path: Path) -> None:
    assert all(trained[k].is_file() for k in ("coarse", "ckpt", "refine")), trained["log"][-3000:]
    untrained = tmp_path / "untrained.pt"
    torch.manual_seed(0)
    torch.save(build_network(BUNDLE).state_dict(), untrained)
    before = evaluate(phantom_data, trained, untrained, tmp_path / "eval0")
    after = evaluate(phantom_data, trained, trained["ckpt"], tmp_path / "eval1")
    assert after > before + 0.3, f"trained mean Dice {after:.3f} vs untrained {before:.3f}"
    assert after > 0.5
    # evaluate.json writes per-case, per-structure Dice and HD95 at the original image size
    raw = (tmp_path / "eval1" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert raw[0].split(",")[1:] == [f"class{k}" for k in range(6)] + ["mean"]
    assert (tmp_path / "eval1" / "val_hd95_raw.csv").is_file()
    for pred in (tmp_path / "eval1" / "pred").glob("*_seg.nii.gz"):
        cid = pred.name.removesuffix("_seg.nii.gz")
        assert read_nifti(pred).shape == read_nifti(phantom_data / "labelsTr" / f"{cid}.nii.gz").shape


def test_stage_3_redraws_the_vertebrae(phantom_data: Path, trained: dict, tmp_path: Path) -> None:
    """evaluate.json runs the per-vertebra stage on stage 2's masks: with untrained stage-3 weights the vertebrae
    are lost (no probability over the threshold), with the trained ones they are kept; switched off
    (``refine_vertebrae false``), stage 2's masks are scored as they are."""
    untrained = tmp_path / "untrained_refine.pt"
    torch.manual_seed(0)
    torch.save(build_network(BUNDLE, "refine_network_def").state_dict(), untrained)
    refined = evaluate(phantom_data, trained, trained["ckpt"], tmp_path / "refined")
    lost = evaluate(phantom_data, trained, trained["ckpt"], tmp_path / "lost", "--refine_ckpt_path", str(untrained))
    plain = evaluate(phantom_data, trained, trained["ckpt"], tmp_path / "plain", "--refine_vertebrae", "false")
    assert lost < 0.2 < 0.5 < refined, f"refined {refined:.3f}, with untrained stage 3 {lost:.3f}"
    assert plain > 0.5 and plain != refined


def newest_checkpoint(run_dir: Path) -> Path:
    return max(run_dir.glob("checkpoint_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[1]))


def test_stage_2_ships_the_mean_of_its_best_and_last_weights(trained: dict, phantom_data: Path) -> None:
    """``finalize`` writes mean(best-validation, last epoch) to models/model.pt (and refine.pt); stage 1 ships its
    best weights. A finished run started again (``make train`` after the stages are done) trains nothing and
    writes the same bytes, or the new mean where the best weights have changed."""
    run_dir, shipped = trained["work"] / "run", trained["ckpt"]
    best_file = run_dir / "best_model.pt"
    best, last = torch.load(best_file), torch.load(newest_checkpoint(run_dir))["model"]
    weights = torch.load(shipped)
    assert weights.keys() == best.keys()
    for k, v in weights.items():
        torch.testing.assert_close(v, (best[k] + last[k]) / 2)
    coarse_best = torch.load(trained["work"] / "coarse" / "best_coarse.pt")
    for k, v in torch.load(trained["coarse"]).items():
        torch.testing.assert_close(v, coarse_best[k], rtol=0, atol=0, msg="stage 1 ships its best weights as they are")
    refine_run = trained["work"] / "refine"
    refine_best, refine_last = torch.load(refine_run / "best_refine.pt"), torch.load(newest_checkpoint(refine_run))
    for k, v in torch.load(trained["refine"]).items():
        torch.testing.assert_close(v, (refine_best[k] + refine_last["model"][k]) / 2, msg="stage 3 ships the mean")
    sizes = json.loads((trained["refine"].parent / "refine_sizes.json").read_text())
    cases = json.loads((phantom_data / "dataset.json").read_text())["training"]
    assert sizes["labels"] == sum(case["fold"] != 0 for case in cases), "fold 0's training cases"
    assert len(sizes["level_sizes"]) == 6 and 0.9 < float(np.median(sizes["level_sizes"])) < 1.1, \
        "and beside it each level's window size, measured on the training labels"
    # the evaluator's own record of its best epoch (its last line in stage 2's log) is the one kept
    value, epoch = re.findall(r"Key metric: val_mean_dice best value: (\S+) at epoch: (\d+)", trained["fine_log"])[-1]
    record = json.loads((run_dir / "best_metric.json").read_text())
    assert record["epoch"] == int(epoch) and record["metric"] == pytest.approx(float(value))

    epochs = newest_checkpoint(run_dir).stem.split("=")[1]
    args = ["run", "training", "--config_file", str(CONFIGS / "train.json"), "--dataset_dir", str(phantom_data),
            "--run_dir", str(run_dir), "--ckpt_dir", str(shipped.parent), "--max_epochs", epochs, *SMALL]
    before, best_bytes = shipped.read_bytes(), best_file.read_bytes()
    log = bundle_run(*args)
    assert f"Epoch: {epochs}/{epochs}" not in log, "a finished run trains nothing when started again"
    assert shipped.read_bytes() == before
    try:  # best weights of zero: the mean is half the last epoch's, so the file is averaged, not copied
        torch.save({k: torch.zeros_like(v) for k, v in best.items()}, best_file)
        bundle_run(*args)
        for k, v in torch.load(shipped).items():
            torch.testing.assert_close(v, last[k] / 2)
    finally:
        best_file.write_bytes(best_bytes)
        shipped.write_bytes(before)


def test_a_finished_run_writes_its_weights_where_it_is_told(trained: dict, phantom_data: Path,
                                                            tmp_path: Path) -> None:
    """Started again with another ``ckpt_dir`` (``make train MODELS=...``), a finished run of either stage trains
    nothing and writes the weights it ships there."""
    stages = {"coarse": ("coarse", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'train_coarse.json'}']", SMALL_COARSE),
              "ckpt": ("run", str(CONFIGS / "train.json"), SMALL), "refine": ("refine", TRAIN_REFINE, SMALL_REFINE)}
    for key, (run, configs, grid) in stages.items():
        run_dir = trained["work"] / run
        epochs = newest_checkpoint(run_dir).stem.split("=")[1]
        log = bundle_run("run", "training", "--config_file", configs, "--dataset_dir", str(phantom_data),
                         "--run_dir", str(run_dir), "--ckpt_dir", str(tmp_path), "--max_epochs", epochs, *grid)
        assert f"Epoch: {epochs}/{epochs}" not in log, "a finished run trains nothing when started again"
        assert (tmp_path / trained[key].name).read_bytes() == trained[key].read_bytes()


def test_interrupted_training_resumes(trained: dict, phantom_data: Path) -> None:
    run_dir = trained["work"] / "run"
    ckpts = sorted(run_dir.glob("checkpoint_epoch=*.pt"))
    assert ckpts, "training left no resumable checkpoint"
    log = bundle_run(
        "run", "training", "--config_file", str(CONFIGS / "train.json"), "--dataset_dir", str(phantom_data),
        "--run_dir", str(run_dir), "--ckpt_dir", str(trained["work"] / "models"), "--max_epochs", "17",
        "--learning_rate", "0.01", *SMALL,
    )
    assert "Epoch: 17/17" in log
    assert "Epoch: 1/17" not in log, "training restarted from scratch instead of resuming"
    assert [p.name for p in run_dir.glob("checkpoint_epoch=*.pt")] == ["checkpoint_epoch=17.pt"], \
        "the resumed run keeps one checkpoint, its last"


def test_inference_restores_original_size_and_exports(trained: dict, phantom_data: Path, tmp_path: Path) -> None:
    bundle_run(
        "run", "--config_file", str(CONFIGS / "inference.json"), "--dataset_dir", str(phantom_data),
        "--ckpt_path", str(trained["ckpt"]), "--output_dir", str(tmp_path / "pred"), *cascade_args(trained),
    )
    meta = json.loads((phantom_data / "dataset.json").read_text())
    preds = sorted((tmp_path / "pred").glob("*_seg.nii.gz"))
    assert len(preds) == meta["numTest"]
    shapes = {r["id"]: tuple(r["shape"]) for r in meta["test"]}
    for pred in preds:
        class_map = read_nifti(pred)
        assert class_map.shape == shapes[pred.name.removesuffix("_seg.nii.gz")]
        assert set(np.unique(class_map)) <= set(range(7))
    report = export_dir(tmp_path / "pred", tmp_path / "npy", ExportFormat.from_dataset_json(
        phantom_data / "dataset.json"), shapes, progress=False)
    assert not report.bad and len(report.written) == len(preds)
    for npy in report.written:
        arr = np.load(npy)
        assert arr.dtype == np.uint8 and arr.shape == (*shapes[npy.stem], 7)
        assert (arr.sum(-1) == 1).all(), "background-last: every pixel has exactly one channel"


def test_predict_from_dicom(trained: dict, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    raw = write_challenge_folder(tmp_path / "raw", n_train=0, n_test=2, shapes=[(200, 100), (180, 120)], seed=9)
    images = sorted((raw / "test" / "img").glob("*.dcm"))
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a dicom")
    twin = tmp_path / "other" / images[0].name  # a second input with the same case id: both refused
    twin.parent.mkdir()
    shutil.copy(images[0], twin)
    report = predict([*images, bad, twin], tmp_path / "out", ckpt_path=str(trained["ckpt"]),
                     coarse_ckpt_path=str(trained["coarse"]), coarse_spatial_size=[96, 48], spatial_size=[64, 32],
                     refine_ckpt_path=str(trained["refine"]), refine_size=32, progress=False)
    first, second = images[0].stem, images[1].stem
    noise = capfd.readouterr().err
    assert "nvImageCodec" not in noise and "Setting logging properties" not in noise, "predict reports alone"
    assert sorted(report.bad) == sorted([first, "broken"]) and "broken.dcm" in report.bad["broken"]
    assert report.bad[first] == f"{twin}: same case id {first!r} as {images[0]}; not segmented"
    assert not (tmp_path / "out" / f"{first}.npy").exists()
    with open(tmp_path / "out" / CHECKS_FILE, newline="") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert list(rows) == [first, second, "broken"]
    for case in (first, "broken"):
        assert rows[case]["status"] == "bad" and rows[case]["detail"] == report.bad[case]
    assert rows[second]["status"] == ("check" if second in report.implausible else "ok")
    assert rows[second]["detail"] == "; ".join(report.implausible.get(second, []))
    arr = np.load(tmp_path / "out" / f"{second}.npy")
    assert arr.shape == (*read_radiograph(images[1]).pixels.shape, 7) and arr.dtype == np.uint8
    assert (tmp_path / "out" / f"{second}.png").stat().st_size > 0


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    raw = write_challenge_folder(tmp_path / "raw", n_train=0, n_test=1, shape=(128, 64))
    images = sorted((raw / "test" / "img").glob("*.dcm"))
    with pytest.raises(FileNotFoundError, match="nope.pt: no trained weights"):
        predict(images, tmp_path / "out", ckpt_path=str(tmp_path / "nope.pt"), progress=False)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RuntimeError, match="corrupt.pt: cannot load the weights"):
        predict(images, tmp_path / "out", ckpt_path=str(corrupt), progress=False)
    foreign = tmp_path / "foreign.pt"
    torch.save({"layer.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(RuntimeError, match="foreign.pt: not the weights of the bundle's BasicUNet"):
        predict(images, tmp_path / "out", ckpt_path=str(foreign), progress=False)
    six = tmp_path / "six.pt"  # a stage 1 trained on other structures than the shipped stage 2
    torch.save(build_network(BUNDLE, "coarse_network_def", num_classes=6).state_dict(), six)
    with pytest.raises(RuntimeError, match="six.pt predicts 6 classes but .*model.pt 7: the two stages must"):
        predict(images, tmp_path / "out", coarse_ckpt_path=str(six), progress=False)
    stage_2 = str(BUNDLE / "models" / "model.pt")  # stage-2 weights given as stage 3's
    with pytest.raises(RuntimeError, match="model.pt: predicts 7 classes, not the 3 of the per-vertebra stage"):
        predict(images, tmp_path / "out", refine_ckpt_path=stage_2, progress=False)
    with pytest.raises(FileNotFoundError, match="nope.pt: no trained weights for stage 3 .* `make train-refine`"):
        predict(images, tmp_path / "out", refine_ckpt_path=str(tmp_path / "nope.pt"), progress=False)
    assert not list(tmp_path.glob("out/*.npy")), "no output is written without usable weights"


def test_verify_net_in_out() -> None:
    log = bundle_run(
        "verify_net_in_out", "network_def", "--meta_file", str(CONFIGS / "metadata.json"),
        "--config_file", str(CONFIGS / "inference.json"),
    )
    assert "data shape of network is verified with no error" in log


@pytest.mark.parametrize(("stage", "weights", "net_id"), [("", "model.pt", "network_def"),
                                                       ("train_coarse.json", "coarse.pt", "coarse_network_def"),
                                                       ("train_refine.json", "refine.pt", "refine_network_def")],
                         ids=["fine", "coarse", "refine"])
def test_multi_gpu_config_runs_ddp_on_two_cpu_processes(stage: str, weights: str, net_id: str, phantom_data: Path,
                                                        tmp_path: Path) -> None:
    """``multi_gpu_train.json`` after each stage's configs wraps that stage's network (``trained_network_def``)."""
    configs = [str(CONFIGS / name) for name in ("train.json", stage, "multi_gpu_train.json") if name]
    grid = {"": SMALL, "train_coarse.json": SMALL_COARSE, "train_refine.json": SMALL_REFINE}[stage]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run", "training", "--config_file", str(configs),
        "--logging_file", str(CONFIGS / "logging.conf"), "--dataset_dir", str(phantom_data),
        "--run_dir", str(tmp_path / "run"), "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "1", *grid,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert (tmp_path / "run" / "checkpoint_epoch=1.pt").is_file()
    assert log.count("Saved checkpoint at epoch: 1") == 1, "rank 0 alone saves checkpoints"
    network = build_network(BUNDLE, net_id)  # the phantoms have the shipped model's seven classes
    network.load_state_dict(torch.load(tmp_path / "models" / weights), strict=True)  # the stage's own network


# A user's own data set with other structures than the shipped model's: five (L1-L5), in 6-channel union-last
# masks saved as v7.3 .mat. Nothing below names the class count: training takes it from dataset.json, predicting
# and exporting from the weights.
OWN_NAMES = ["L1", "L2", "L3", "L4", "L5"]


@pytest.fixture(scope="module")
def own_trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The own data set converted, and both stages briefly trained on it with the unchanged bundle commands."""
    root = tmp_path_factory.mktemp("own")
    shapes = [(192 + 8 * (i % 5), 96 + 6 * (i % 3)) for i in range(22)]
    raw = write_challenge_folder(root / "raw", n_train=20, n_test=2, shapes=shapes, seed=5, layout="union-last",
                                 channels=6, mat_version="7.3")
    report = convert(raw, root / "data", Options(channels=6), structure_names=OWN_NAMES, progress=False)
    assert not report.bad
    common = ["--dataset_dir", str(root / "data"), "--ckpt_dir", str(root / "models"), "--max_epochs", "8",
              "--learning_rate", "0.01"]
    bundle_run("run", "training", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'train_coarse.json'}']",
               "--run_dir", str(root / "coarse"), *common, *SMALL_COARSE)
    bundle_run("run", "training", "--config_file", str(CONFIGS / "train.json"), "--run_dir", str(root / "fine"),
               *common, *SMALL)
    bundle_run("run", "training", "--config_file", TRAIN_REFINE, "--run_dir", str(root / "refine"), *common,
               *SMALL_REFINE)
    return {"raw": raw, "data": root / "data", "ckpt": root / "models" / "model.pt",
            "coarse": root / "models" / "coarse.pt", "refine": root / "models" / "refine.pt"}


def test_own_structures_are_trained_and_evaluated_with_their_class_count(own_trained: dict, tmp_path: Path) -> None:
    assert checkpoint_classes(own_trained["coarse"]) == checkpoint_classes(own_trained["ckpt"]) == len(OWN_NAMES) + 1
    bundle_run(
        "run", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']",
        "--dataset_dir", str(own_trained["data"]), "--ckpt_path", str(own_trained["ckpt"]), "--output_dir",
        str(tmp_path / "eval"), *SCHEDULE, "--coarse_ckpt_path", str(own_trained["coarse"]),
        "--coarse_spatial_size", "[96,48]", "--spatial_size", "[64,32]", "--refine_ckpt_path",
        str(own_trained["refine"]), "--refine_size", "32",
    )
    _, rows = evaluation_table(tmp_path / "eval", own_trained["data"] / "dataset.json")
    assert [row["structure"] for row in rows] == [*OWN_NAMES, "mean"]
    sizes = json.loads((own_trained["refine"].parent / "refine_sizes.json").read_text())["level_sizes"]
    assert len(sizes) == len(OWN_NAMES), "stage 3's level sizes are its own data set's"


def test_own_structures_are_predicted_in_their_own_format(own_trained: dict, tmp_path: Path) -> None:
    images = sorted((own_trained["raw"] / "test" / "img").glob("*.dcm"))
    weights = {"ckpt_path": str(own_trained["ckpt"]), "coarse_ckpt_path": str(own_trained["coarse"]),
               "refine_ckpt_path": str(own_trained["refine"])}
    with pytest.raises(ValueError, match="model.pt predicts 5 structures but the background-last format with 7 "):
        predict(images, tmp_path / "wrong", progress=False, **weights)
    assert not (tmp_path / "wrong").exists(), "nothing is written for a format the weights do not fit"
    fmt = ExportFormat.from_dataset_json(own_trained["data"] / "dataset.json")
    report = predict(images, tmp_path / "out", fmt, structure_names=OWN_NAMES, progress=False, **weights)
    assert not report.bad and len(report.written) == 2 * len(images)
    for image in images:
        arr = np.load(tmp_path / "out" / f"{image.stem}.npy")
        assert arr.shape == (*read_radiograph(image).pixels.shape, len(OWN_NAMES) + 1) and arr.dtype == np.uint8
        assert (arr[..., :-1].sum(-1) <= 1).all(), "one structure per pixel"
        assert (arr[..., -1] == arr[..., :-1].max(-1)).all(), "union-last: the last channel is the whole spine"
        assert arr[..., :-1].any(), "the trained model finds structures"


def test_own_structures_export_and_serve_through_onnx(own_trained: dict, tmp_path: Path) -> None:
    written = export_model(own_trained["ckpt"], tmp_path / "export", coarse_ckpt=own_trained["coarse"],
                           refine_ckpt=own_trained["refine"])
    stored = {"inference.json": ""}
    net = torch.jit.load(str(written["torchscript"]), _extra_files=stored)
    assert net(torch.zeros(1, 1, 64, 32)).shape[1] == len(OWN_NAMES) + 1
    assert json.loads(stored["inference.json"])["num_classes"] == len(OWN_NAMES) + 1, "its config fits its network"
    images = sorted((own_trained["raw"] / "test" / "img").glob("*.dcm"))
    fmt = ExportFormat.from_dataset_json(own_trained["data"] / "dataset.json")
    served = predict(images, tmp_path / "onnx", fmt, backend="onnx", onnx_model=written["onnx"], progress=False)
    direct = predict(images, tmp_path / "torch", fmt, progress=False, ckpt_path=str(own_trained["ckpt"]),
                     coarse_ckpt_path=str(own_trained["coarse"]), refine_ckpt_path=str(own_trained["refine"]))
    assert not served.bad and not direct.bad
    for image in images:
        np.testing.assert_array_equal(np.load(tmp_path / "onnx" / f"{image.stem}.npy"),
                                      np.load(tmp_path / "torch" / f"{image.stem}.npy"))
