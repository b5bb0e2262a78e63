"""Exporter, anatomy checks and overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.convert import convert
from spine_seg.anatomy import order_problems, plausibility_problems
from spine_seg.batch_report import CHECKS_FILE
from spine_seg.cli import main as cli_main
from spine_seg.export import ExportFormat, class_map_to_challenge, export_dir
from spine_seg.label_layout import LAYOUTS
from spine_seg.mat_io import read_mask
from spine_seg.nifti_io import write_nifti
from spine_seg.overlay import BANNER, PALETTE, overlay_rgb, save_overlay
from spine_seg.phantom import make_phantom, write_challenge_folder


@pytest.mark.parametrize("mat_version", ["5", "7.3"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mat_to_nifti_to_npy_round_trip_is_exact(tmp_path: Path, layout: str, mat_version: str) -> None:
    """.mat -> label NIfTI (conversion) -> exporter gives back the original .mat array bit for bit."""
    raw = write_challenge_folder(
        tmp_path / "raw", n_train=3, n_test=0, shapes=[(90, 60), (70, 50)], layout=layout, mat_version=mat_version
    )
    report = convert(raw, tmp_path / "data", progress=False)
    assert not report.bad
    fmt = ExportFormat.from_dataset_json(tmp_path / "data" / "dataset.json")
    assert fmt == ExportFormat(layout, 7)
    exported = export_dir(tmp_path / "data" / "labelsTr", tmp_path / "npy", fmt, progress=False)
    assert len(exported.written) == 3 and not exported.bad
    for npy in exported.written:
        original = read_mask(raw / "train" / "label" / f"{npy.stem}.mat")
        again = np.load(npy)
        assert again.dtype == np.uint8
        np.testing.assert_array_equal(again, original)


def test_export_reports_bad_files_and_keeps_going(tmp_path: Path) -> None:
    _, class_map = make_phantom((64, 48), seed=1)
    write_nifti(tmp_path / "pred" / "001_seg.nii.gz", class_map)
    write_nifti(tmp_path / "pred" / "002_seg.nii.gz", class_map[:40])  # wrong size
    bad_labels = class_map.copy()
    bad_labels[0, 0] = 9
    write_nifti(tmp_path / "pred" / "003_seg.nii.gz", bad_labels)  # label out of range
    write_nifti(tmp_path / "pred" / "004_seg.nii.gz", np.where(class_map == 4, 0, class_map))  # L3 missing
    write_nifti(tmp_path / "pred" / "005.nii.gz", class_map)  # two predictions for one case: both refused
    write_nifti(tmp_path / "pred" / "005_seg.nii.gz", class_map)
    shapes = {f"00{k}": (64, 48) for k in range(1, 6)}
    names = ["T12", "L1", "L2", "L3", "L4", "L5"]
    report = export_dir(tmp_path / "pred", tmp_path / "npy", ExportFormat(), shapes, False, names)
    assert [p.name for p in report.written] == ["001.npy", "004.npy"]
    assert sorted(report.bad) == ["002", "003", "005"]
    assert report.bad["005"].endswith("2 predictions for case '005' (005.nii.gz, 005_seg.nii.gz); none exported")
    assert "002_seg.nii.gz" in report.bad["002"] and "(40, 48)" in report.bad["002"]
    assert "003_seg.nii.gz" in report.bad["003"] and "label 9" in report.bad["003"]
    assert list(report.implausible) == ["004"]
    assert report.summary() == "5 cases: 1 ok, 1 to check, 3 bad"
    assert report.implausible["004"][0] == "L3 missing" and report.implausible["004"][1].startswith("L2-L4 gap ")
    assert sorted(p.name for p in (tmp_path / "npy").iterdir()) == ["001.npy", "004.npy", CHECKS_FILE], (
        "no partial files left"
    )
    rows = (tmp_path / "npy" / CHECKS_FILE).read_text().splitlines()
    assert rows[0] == "case,status,detail" and rows[1] == "001,ok,"
    assert rows[4] == f"004,check,{'; '.join(report.implausible['004'])}"
    assert rows[2].startswith("002,bad,") and "(40, 48)" in rows[2] and rows[3].startswith("003,bad,")
    assert rows[5].startswith("005,bad,") and len(rows) == 6
    # the CLI exits non-zero when a file was bad
    assert cli_main(["export", str(tmp_path / "pred"), str(tmp_path / "npy2"), "--no-progress"]) == 1


def test_export_refuses_labels_that_are_not_classes(tmp_path: Path) -> None:
    _, class_map = make_phantom((64, 48), seed=1)
    write_nifti(tmp_path / "pred" / "001.nii.gz", class_map.astype(np.float32) + 0.5)  # not whole numbers
    negative = class_map.astype(np.int16)
    negative[0, 0] = -1
    write_nifti(tmp_path / "pred" / "002.nii.gz", negative)
    write_nifti(tmp_path / "pred" / "003.nii.gz", class_map.astype(np.float32))  # whole numbers as floats: fine
    (tmp_path / "pred" / "004.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    report = export_dir(tmp_path / "pred", tmp_path / "npy", ExportFormat(), progress=False)
    assert [p.name for p in report.written] == ["003.npy"]
    assert "not whole numbers" in report.bad["001"] and "label -1" in report.bad["002"]
    damaged = tmp_path / "pred" / "004.nii.gz"
    assert report.bad["004"].startswith(f"{damaged}: not a readable NIfTI file"), "named once, then the cause"


def test_export_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    bad_json = tmp_path / "dataset.json"
    bad_json.write_text("{not json")
    for args, message in [
        ([str(tmp_path / "nope"), str(tmp_path / "o")], "nope: no such folder"),
        ([str(tmp_path / "file"), str(tmp_path / "o")], "file: not a folder of predictions"),
        ([str(tmp_path / "empty"), str(tmp_path / "o")], "no prediction NIfTI files"),
        ([str(tmp_path / "empty"), str(tmp_path / "file")], "file: the output folder is a file"),
        ([str(tmp_path / "empty"), "o", "--dataset-json", str(bad_json)], "not a readable dataset.json"),
    ]:
        assert cli_main(["export", *args, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_class_map_to_challenge_layouts() -> None:
    class_map = np.array([[0, 1, 2], [6, 0, 3]], dtype=np.uint8)
    out = class_map_to_challenge(class_map, ExportFormat("background-last", 7))
    assert out.shape == (2, 3, 7) and (out.sum(-1) == 1).all()
    assert out[0, 0, 6] == 1 and out[0, 1, 0] == 1 and out[1, 0, 5] == 1
    union = class_map_to_challenge(class_map, ExportFormat("union-last", 7))
    np.testing.assert_array_equal(union[..., 6], class_map > 0)


def test_order_problems_flags_swapped_and_missing_vertebrae() -> None:
    _, class_map = make_phantom((200, 100), seed=2)
    assert order_problems(class_map, 6) == []
    swapped = class_map.copy()
    swapped[class_map == 1], swapped[class_map == 2] = 2, 1
    problems = order_problems(swapped, 6, ["T12", "L1", "L2", "L3", "L4", "L5"])
    assert len(problems) == 1 and problems[0].startswith("L1 (row")
    missing = np.where(class_map == 4, 0, class_map).astype(np.uint8)
    assert order_problems(missing, 6) == ["4 missing"]


def test_plausibility_problems_flag_a_skipped_or_squeezed_vertebra() -> None:
    names = ["T12", "L1", "L2", "L3", "L4", "L5"]
    _, class_map = make_phantom((200, 100), seed=2)
    assert plausibility_problems(class_map, 6, names) == []
    skipped = np.where(class_map == 3, 0, np.where(class_map > 3, class_map - 1, class_map)).astype(np.uint8)
    problems = plausibility_problems(skipped, 6, names)  # body 3 unlabelled: bodies 4-6 named L2-L4
    assert problems[0] == "L5 missing" and len(problems) == 2
    assert problems[1].startswith("L1-L2 gap ") and float(problems[1].split()[2]) > 1.5
    squeezed = class_map.copy()
    squeezed[:56][squeezed[:56] == 2] = 0  # L1 keeps only its lowest rows
    assert [p.split(" area")[0] for p in plausibility_problems(squeezed, 6, names) if "area" in p] == ["L1"]


def test_overlay_colours_structures_only(tmp_path: Path) -> None:
    image, class_map = make_phantom((120, 80), seed=3)
    rgb = overlay_rgb(image, class_map)
    assert rgb.shape == (120, 80, 3)
    background = class_map == 0
    assert (rgb[background, 0] == rgb[background, 1]).all(), "background stays gray"
    assert (rgb[class_map == 1, 0].astype(int) > rgb[class_map == 1, 1].astype(int)).mean() > 0.9, "T12 is red"
    save_overlay(tmp_path / "o.png", image, class_map, max_size=60)
    assert max(Image.open(tmp_path / "o.png").size) == 60
    plain = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    assert not (plain == BANNER).all(-1).any()
    save_overlay(tmp_path / "flagged.png", image, class_map, max_size=60, warnings=["L1-L2 gap 2.00 x the median"])
    flagged = np.asarray(Image.open(tmp_path / "flagged.png").convert("RGB"))
    assert flagged.shape == plain.shape and (flagged[0] == BANNER).all(), "a red banner across the top"
    np.testing.assert_array_equal(flagged[-5:], plain[-5:])  # the rest of the picture is left as it was
    with pytest.raises(ValueError, match="differ in size"):
        overlay_rgb(image, class_map[:10])


def test_overlay_legend_names_each_colour(tmp_path: Path) -> None:
    image, class_map = make_phantom((600, 400), seed=3)
    names = ["T12", "L1", "L2", "L3", "L4", "L5"]
    save_overlay(tmp_path / "named.png", image, class_map, names=names)
    save_overlay(tmp_path / "other.png", image, class_map, names=["A", "B", "C", "D", "E", "F"])
    named = np.asarray(Image.open(tmp_path / "named.png").convert("RGB"))
    corner = named[named.shape[0] // 2 :, : named.shape[1] // 2]
    for k in range(1, 7):  # an exact swatch of each structure's colour (the tinted overlay never is one)
        assert (corner == PALETTE[k - 1].astype(np.uint8)).all(-1).sum() > 20, names[k - 1]
    other = np.asarray(Image.open(tmp_path / "other.png").convert("RGB"))
    assert (named != other).any(-1)[named.shape[0] // 2 :].any(), "the names are written"
    np.testing.assert_array_equal(named[: named.shape[0] // 2], other[: other.shape[0] // 2])
