"""spine_seg.predict batch behaviour and the ``spine-seg predict`` command line, without a network: the bundle
run is replaced by one that writes a fixed plausible class map (six bands) and fails on any image whose name
says "poison", the way MONAI fails on an image it cannot take."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from spine_seg import cli as cli_module
from spine_seg import predict as predict_module
from spine_seg.batch_report import CHECKS_FILE
from spine_seg.cli import main as cli_main
from spine_seg.nifti_io import read_nifti, write_nifti
from spine_seg.phantom import make_phantom, write_dicom
from spine_seg.predict import Weights, predict

NAMES = ["T12", "L1", "L2", "L3", "L4", "L5"]


def bands(shape: tuple[int, ...]) -> np.ndarray:
    """Six vertebrae as equal bands of rows in the middle third of the columns: passes every check."""
    rows, cols = shape
    class_map = np.zeros(shape, np.uint8)
    edges = np.linspace(rows * 0.2, rows * 0.8, 7).astype(int)
    for k in range(6):
        class_map[edges[k] : edges[k + 1] - 1, cols // 3 : 2 * cols // 3] = k + 1
    return class_map


@pytest.fixture
def fake_bundle(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace the bundle (weights check and inference run); returns the list of batches it was asked to run."""
    runs: list[list[str]] = []

    def run(datalist: list[dict[str, str]], output_dir: Path, *args: object, **kwargs: object) -> None:
        names = [Path(d["image"]).name.removesuffix(".nii") for d in datalist]
        runs.append(names)
        if any("poison" in n for n in names):
            raise RuntimeError("SaveImage cannot find a suitable writer")
        for item, name in zip(datalist, names, strict=True):
            write_nifti(Path(output_dir) / f"{name}_seg.nii.gz", bands(read_nifti(item["image"]).shape))

    weights = Weights(Path("c.pt"), Path("m.pt"), Path("r.pt"), 7)
    monkeypatch.setattr(predict_module, "bundle_weights", lambda *a, **k: weights)
    monkeypatch.setattr(predict_module, "run_bundle_inference", run)
    return runs


def dicom(path: Path, shape: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dicom(path, make_phantom(shape, seed=seed)[0])


def checks(out: Path) -> dict[str, dict[str, str]]:
    with open(out / CHECKS_FILE, newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def test_a_batch_finishes_the_good_images_whatever_the_bad_ones_do(
    tmp_path: Path, fake_bundle: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predict_module, "CHUNK", 3)
    good = [dicom(tmp_path / "in" / f"00{k}.dcm", seed=k) for k in range(1, 5)]
    poison = dicom(tmp_path / "in" / "poison.dcm")
    tiny = write_dicom(tmp_path / "in" / "tiny.dcm", np.arange(40, dtype=np.uint8).reshape(4, 10))
    blank = write_dicom(tmp_path / "in" / "blank.dcm", np.full((80, 60), 7, np.uint8))
    images = [good[0], poison, tiny, good[1], blank, good[2], good[3]]
    report = predict(images, tmp_path / "out", structure_names=NAMES, progress=False)
    assert sorted(report.bad) == ["blank", "poison", "tiny"]
    assert report.bad["poison"].startswith(f"{poison}: segmentation failed (RuntimeError: SaveImage cannot")
    assert report.bad["tiny"] == f"{tiny}: image is 4 x 10 px; at least 16 px a side is needed"
    assert report.bad["blank"] == f"{blank}: image is blank (every pixel is 7): nothing to segment"
    for path in good:
        npy = np.load(tmp_path / "out" / f"{path.stem}.npy")
        assert npy.shape == (96, 64, 7) and npy.dtype == np.uint8 and (npy.sum(-1) == 1).all()
        assert (tmp_path / "out" / f"{path.stem}.png").is_file()
    # chunks of three: the chunk with the poisoned image ran whole, then image by image
    assert fake_bundle == [["001", "poison"], ["001"], ["poison"], ["002", "003"], ["004"]]
    rows = checks(tmp_path / "out")
    assert list(rows) == ["001", "poison", "tiny", "002", "blank", "003", "004"]
    assert [rows[c]["status"] for c in rows] == ["ok", "bad", "bad", "ok", "bad", "ok", "ok"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [CHECKS_FILE] + [f"00{k}.{ext}" for k in range(1, 5) for ext in ("npy", "png")]
    ), "nothing half-written, nothing for the bad images"


def test_checks_csv_keeps_earlier_cases_and_names_outputs_left_from_before(
    tmp_path: Path, fake_bundle: list[list[str]]
) -> None:
    first = [dicom(tmp_path / "in" / "a.dcm"), dicom(tmp_path / "in" / "b.dcm", seed=1)]
    predict(first, tmp_path / "out", structure_names=NAMES, progress=False)
    first[1].write_bytes(b"no longer a DICOM file")  # b's input breaks; its earlier outputs stay
    report = predict([first[1], dicom(tmp_path / "in" / "c.dcm")], tmp_path / "out", progress=False)
    assert report.bad["b"].endswith(f"b.npy, b.png in {tmp_path / 'out'} are from an earlier run, left as they were")
    rows = checks(tmp_path / "out")
    assert list(rows) == ["a", "b", "c"], "a, which this batch did not see, keeps its row"
    assert [rows[c]["status"] for c in rows] == ["ok", "bad", "ok"] and rows["b"]["detail"] == report.bad["b"]
    assert (tmp_path / "out" / "b.npy").is_file(), "nothing already written is deleted"


def test_cli_finds_dicoms_by_suffix_in_any_case(tmp_path: Path, fake_bundle: list[list[str]]) -> None:
    for name in ("x.dcm", "y.DCM", "z.dicom"):
        dicom(tmp_path / "in" / name)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    assert cli_main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npy")) == ["x.npy", "y.npy", "z.npy"]


def test_cli_refuses_bad_arguments_before_any_work(
    tmp_path: Path, fake_bundle: list[list[str]], capsys: pytest.CaptureFixture
) -> None:
    image = dicom(tmp_path / "in" / "a.dcm")
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    out = ["--out", str(tmp_path / "out")]
    cases = [
        ([str(tmp_path / "nope.dcm"), *out], "nope.dcm: no such file or folder"),
        ([str(tmp_path / "empty"), *out], "no DICOM files (.dcm, .dicom) in this folder (0 other entries)"),
        ([str(image), "--out", str(tmp_path / "afile")], "afile: the output folder is a file"),
        ([str(image), *out, "--structure-names", "A,B"], "2 structure names (A, B) but the background-last format"),
        ([str(image), *out, "--layout", "one-hot"], "m.pt predicts 6 structures but the one-hot format with 7 "
                                                    "channels holds 7: give the format of the data it was trained"),
        ([str(image), *out, "--backend", "onnx", "--coarse-weights", "x.pt"], "--coarse-weights is for the torch"),
        ([str(image), *out, "--backend", "onnx", "--refine-weights", "x.pt"], "--refine-weights is for the torch"),
    ]
    for args, message in cases:
        assert cli_main(["predict", *args, "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert fake_bundle == [] and not (tmp_path / "out").exists(), "nothing run, nothing written"
    with pytest.raises(SystemExit):
        cli_main(["predict", str(image), *out, "--limit", "0"])
    assert "0 is not a positive number" in capsys.readouterr().err


def test_cli_names_the_structures_after_the_data_set_else_the_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overlays, checks and DICOM SEG name the structures: ``--structure-names``, else ``--dataset-json``'s labels
    (a model trained on other structures), else the bundle's metadata (T12-L5) where the format has six."""
    seen: list[list[str] | None] = []

    def record(images: list[Path], out: str, fmt: object, bundle: Path, overlays: bool, names: list[str] | None,
               *args: object, **kwargs: object) -> predict_module.BatchReport:
        seen.append(names)
        return predict_module.BatchReport()

    monkeypatch.setattr(cli_module, "predict", record)
    image = str(dicom(tmp_path / "a.dcm"))
    dataset = tmp_path / "dataset.json"
    labels = {"0": "background", "1": "L1", "2": "L2", "3": "L3", "4": "L4", "5": "L5", "6": "S"}
    dataset.write_text(json.dumps({"labels": labels, "label_layout": "background-last", "label_channels": 7}))
    for args in ([], ["--dataset-json", str(dataset)], ["--structure-names", "A,B,C,D,E,F"],
                 ["--layout", "union-last", "--channels", "6"]):
        cli_main(["predict", image, "--out", str(tmp_path / "out"), "--no-progress", *args])
    assert seen == [NAMES, ["L1", "L2", "L3", "L4", "L5", "S"], list("ABCDEF"), None]
