"""data_prep: DICOM + .mat -> NIfTI + dataset.json, on synthetic challenge folders and on the real data."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import MPEG2MPML

import data_prep.convert as convert_module
import spine_seg.nifti_io
from data_prep.cli import main
from data_prep.convert import Options, Report
from spine_seg.dicom_io import read_radiograph
from spine_seg.label_layout import LAYOUTS, from_class_map, num_structures, to_class_map
from spine_seg.mat_io import read_mask
from spine_seg.nifti_io import read_nifti
from spine_seg.phantom import make_phantom, write_dicom, write_mat

TRAIN_IDS = ["001", "002", "003", "004"]
TEST_IDS = ["501", "502"]
ALL_IDS = TRAIN_IDS + TEST_IDS
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

Convert = Callable[..., Report]


def dataset_json(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def stray_files(out: Path) -> list[Path]:
    """Temporary or hidden files left in the output tree (atomic writes leave none)."""
    return [p for p in out.rglob("*") if p.is_file() and (p.name.startswith(".") or ".tmp" in p.name)]


def sha1(*paths: Path) -> str:
    digest = hashlib.sha1()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def outputs_of(out: Path, case_id: str) -> list[Path]:
    return [out / d / f"{case_id}.nii.gz" for d in ("imagesTr", "labelsTr", "imagesTs")]


# --- a clean run ------------------------------------------------------------------------------------------------


def test_converts_challenge_folder(challenge_dir: Path, tmp_path: Path, run_convert: Convert) -> None:
    out = tmp_path / "out"
    report = run_convert(challenge_dir, out)
    assert sorted(report.converted) == ALL_IDS
    assert report.bad == [] and report.skipped == []
    for case_id in TRAIN_IDS:
        assert (out / "imagesTr" / f"{case_id}.nii.gz").is_file()
        assert (out / "labelsTr" / f"{case_id}.nii.gz").is_file()
    for case_id in TEST_IDS:
        assert (out / "imagesTs" / f"{case_id}.nii.gz").is_file()
        assert not (out / "labelsTr" / f"{case_id}.nii.gz").exists()

    ds = dataset_json(out)
    assert ds["numTraining"] == 4 and ds["numTest"] == 2
    assert ds["labels"] == {"0": "background", **{str(k): f"structure_{k}" for k in range(1, 7)}}
    assert ds["label_layout"] == "background-last"
    assert [r["id"] for r in ds["training"]] == TRAIN_IDS
    assert [r["id"] for r in ds["test"]] == TEST_IDS
    for record in ds["training"]:
        image = challenge_dir / "train" / "img" / f"{record['id']}.dcm"
        mask = challenge_dir / "train" / "label" / f"{record['id']}.mat"
        assert record["shape"] == [64, 48]
        assert record["spacing"] == [1.0, 1.0] and record["spacing_source"] == "default"
        assert record["sha1"] == sha1(image, mask)
        assert record["fold"] in range(5)
        assert record["label_layout"] == "background-last"
        assert record["image"] == f"imagesTr/{record['id']}.nii.gz"
        assert record["label"] == f"labelsTr/{record['id']}.nii.gz"
        np.testing.assert_array_equal(read_nifti(out / record["image"]), read_radiograph(image).pixels)
        expected = to_class_map(read_mask(mask), "background-last")
        np.testing.assert_array_equal(read_nifti(out / record["label"]), expected)
    for record in ds["test"]:
        assert "label" not in record and "fold" not in record
        assert record["sha1"] == sha1(challenge_dir / "test" / "img" / f"{record['id']}.dcm")
        assert record["image"] == f"imagesTs/{record['id']}.nii.gz"
    # No spacing in the phantoms: one warning per case, in the report and in dataset.json.
    spacing_warnings = [w for w in ds["warnings"] if "no PixelSpacing/ImagerPixelSpacing" in w]
    assert sorted(w.split(":")[0] for w in spacing_warnings) == [f"{i}.dcm" for i in ALL_IDS]
    assert ds["warnings"] == report.warnings
    assert stray_files(out) == []


def test_folds_are_deterministic_and_balanced(make_challenge: Callable[..., Path], tmp_path: Path,
                                              run_convert: Convert) -> None:
    src = make_challenge("raw", n_train=10, n_test=0)
    run_convert(src, tmp_path / "a")
    # Same cases, other seed and folder: folds depend on the ids only.
    run_convert(make_challenge("other", n_train=10, n_test=0, seed=5), tmp_path / "b", workers=2)
    folds_a = {r["id"]: r["fold"] for r in dataset_json(tmp_path / "a")["training"]}
    folds_b = {r["id"]: r["fold"] for r in dataset_json(tmp_path / "b")["training"]}
    assert folds_a == folds_b
    assert dataset_json(tmp_path / "a")["num_folds"] == 5
    assert sorted(np.bincount(list(folds_a.values()), minlength=5)) == [2, 2, 2, 2, 2]
    assert list(folds_a.values()) != sorted(folds_a.values())  # shuffled, not in id order


def test_added_cases_leave_the_earlier_folds_alone(make_challenge: Callable[..., Path], tmp_path: Path,
                                                   run_convert: Convert) -> None:
    run_convert(make_challenge("raw", n_train=12, n_test=0), tmp_path / "out")
    before = {r["id"]: r["fold"] for r in dataset_json(tmp_path / "out")["training"]}
    grown = make_challenge("raw", n_train=15, n_test=0)  # the same folder with three cases more
    run_convert(grown, tmp_path / "out")
    after = {r["id"]: r["fold"] for r in dataset_json(tmp_path / "out")["training"]}
    assert {i: after[i] for i in before} == before, "a grown set keeps every earlier case in its fold"
    assert sorted(np.bincount(list(after.values()), minlength=5)) == [3, 3, 3, 3, 3], "the new ones fill the gaps"
    run_convert(grown, tmp_path / "fresh")
    fresh = {r["id"]: r["fold"] for r in dataset_json(tmp_path / "fresh")["training"]}
    assert fresh != after, "without an earlier dataset.json the folds are dealt afresh"


def test_spacing_is_recorded(make_challenge: Callable[..., Path], tmp_path: Path, run_convert: Convert) -> None:
    src = make_challenge(n_train=2, n_test=1, spacing=(0.25, 0.3), spacing_attr="ImagerPixelSpacing")
    report = run_convert(src, tmp_path / "out")
    ds = dataset_json(tmp_path / "out")
    for record in ds["training"] + ds["test"]:
        assert record["spacing"] == [0.25, 0.3] and record["spacing_source"] == "ImagerPixelSpacing"
        assert nib.load(tmp_path / "out" / record["image"]).header.get_zooms()[:2] == (0.25, 0.3)
    for record in ds["training"]:
        assert nib.load(tmp_path / "out" / record["label"]).header.get_zooms()[:2] == (0.25, 0.3)
    assert not any("PixelSpacing" in w for w in report.warnings + ds["warnings"])


def test_nifti_axes_match_dicom_rows_and_columns(tmp_path: Path, run_convert: Convert) -> None:
    """A 70 x 40 image with a marker in one corner loads through MONAI as 70 x 40, marker in place."""
    from monai.transforms import LoadImage

    image, class_map = make_phantom((70, 40), seed=11)
    image[:5, :3] = 255  # top-left corner marker
    image[-5:, -3:] = 0
    src = tmp_path / "raw"
    (src / "train" / "img").mkdir(parents=True)
    (src / "train" / "label").mkdir(parents=True)
    write_dicom(src / "train" / "img" / "001.dcm", image, spacing=(0.2, 0.3))
    mask = from_class_map(class_map, "background-last", 7)
    write_mat(src / "train" / "label" / "001.mat", mask, version="7.3")
    report = run_convert(src, tmp_path / "out")
    assert report.converted == ["001"]
    for reader in (None, "NibabelReader", "ITKReader"):
        loader = LoadImage(image_only=True, reader=reader, dtype=None)
        img = np.asarray(loader(str(tmp_path / "out" / "imagesTr" / "001.nii.gz")))
        lbl = np.asarray(loader(str(tmp_path / "out" / "labelsTr" / "001.nii.gz")))
        assert img.shape == (70, 40) and lbl.shape == (70, 40), reader
        assert (img[:5, :3] == 255).all() and (img[-5:, -3:] == 0).all(), reader
        np.testing.assert_array_equal(img, image)
        np.testing.assert_array_equal(lbl, class_map)
        np.testing.assert_array_equal(from_class_map(lbl.astype(np.uint8), "background-last", 7), mask)
        affine = np.asarray(loader(str(tmp_path / "out" / "imagesTr" / "001.nii.gz")).affine)
        np.testing.assert_allclose(np.abs(np.diag(affine))[:2], [0.2, 0.3])


# --- label layouts and .mat versions -----------------------------------------------------------------------------


@pytest.mark.parametrize("mat_version", ["5", "7.3"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_and_mat_versions(make_challenge: Callable[..., Path], tmp_path: Path, run_convert: Convert,
                                  layout: str, mat_version: str) -> None:
    src = make_challenge(n_train=3, n_test=1, layout=layout, mat_version=mat_version)
    report = run_convert(src, tmp_path / "out")
    assert report.bad == [] and sorted(report.converted) == ["001", "002", "003", "501"]
    ds = dataset_json(tmp_path / "out")
    assert ds["label_layout"] == layout
    assert len(ds["labels"]) == num_structures(layout, 7) + 1
    for record in ds["training"]:
        assert record["label_layout"] == layout
        label = read_nifti(tmp_path / "out" / record["label"])
        assert label.dtype == np.uint8
        original = read_mask(src / "train" / "label" / f"{record['id']}.mat")
        np.testing.assert_array_equal(from_class_map(label, layout, 7), original)


def test_mixed_layouts_warn(make_challenge: Callable[..., Path], tmp_path: Path, run_convert: Convert) -> None:
    src = make_challenge(n_train=3, n_test=0)
    mask = read_mask(src / "train" / "label" / "002.mat")
    union_last = from_class_map(to_class_map(mask, "background-last"), "union-last", 7)
    write_mat(src / "train" / "label" / "002.mat", union_last)
    report = run_convert(src, tmp_path / "out")
    assert report.bad == []
    assert dataset_json(tmp_path / "out")["label_layout"] == "background-last"
    assert [w for w in report.warnings if "layout" in w] == [
        "002: label layout union-last differs from the dataset's background-last"
    ]


def test_label_layout_override(make_challenge: Callable[..., Path], tmp_path: Path) -> None:
    src = make_challenge(n_train=2, n_test=1, layout="union-last")
    out = tmp_path / "out"
    assert main([str(src), str(out), "--label-layout", "union-last", "--workers", "1", "--no-progress"]) == 0
    ds = dataset_json(out)
    assert ds["label_layout"] == "union-last" and len(ds["training"]) == 2


def test_label_layout_override_changes_the_classes(challenge_dir: Path, tmp_path: Path) -> None:
    """Forcing one-hot on background-last masks is allowed: the background channel becomes class 7."""
    out = tmp_path / "out"
    assert main([str(challenge_dir), str(out), "--label-layout", "one-hot", "--workers", "1", "--no-progress"]) == 0
    ds = dataset_json(out)
    assert ds["label_layout"] == "one-hot" and len(ds["labels"]) == 8
    label = read_nifti(out / "labelsTr" / "001.nii.gz")
    mask = read_mask(challenge_dir / "train" / "label" / "001.mat")
    np.testing.assert_array_equal(label == 7, mask[..., 6].astype(bool))
    assert not (label == 0).any()


def test_forced_layout_that_does_not_fit(challenge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = [str(challenge_dir), str(out), "--label-layout", "union-last", "--workers", "1", "--no-progress"]
    assert main(args) == 0  # the test images still convert
    printed = capsys.readouterr().out
    ds = dataset_json(out)
    assert ds["numTraining"] == 0 and ds["numTest"] == 2
    assert len(ds["bad"]) == 4
    for case_id, message in zip(TRAIN_IDS, ds["bad"], strict=True):
        mat = challenge_dir / "train" / "label" / f"{case_id}.mat"
        assert message == f"{mat}: not in layout union-last: last channel is not the union of the structure channels"
        assert message in printed
    assert main([*args, "--strict"]) == 1


# --- bad input ---------------------------------------------------------------------------------------------------


def _rewrite_dicom(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _mask(root: Path, case_id: str = "002") -> np.ndarray:
    return read_mask(root / "train" / "label" / f"{case_id}.mat")


def break_truncated(root: Path) -> Path:
    path = root / "train" / "img" / "002.dcm"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def break_no_pixel_data(root: Path) -> Path:
    path = root / "train" / "img" / "002.dcm"
    _rewrite_dicom(path, lambda ds: ds.__delattr__("PixelData"))
    return path


def break_unsupported_syntax(root: Path) -> Path:
    path = root / "train" / "img" / "002.dcm"
    write_dicom(path, read_radiograph(path).pixels, transfer_syntax="jpeg-baseline")

    def change(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = MPEG2MPML

    _rewrite_dicom(path, change)
    return path


def break_colour(root: Path) -> Path:
    path = root / "train" / "img" / "002.dcm"
    shutil.copyfile(PYDICOM_TEST_FILES / "SC_rgb_small_odd.dcm", path)
    return path


def break_multi_frame(root: Path) -> Path:
    path = root / "train" / "img" / "002.dcm"
    pixels = read_radiograph(path).pixels

    def change(ds: pydicom.Dataset) -> None:
        ds.NumberOfFrames = 3
        ds.PixelData = np.stack([pixels] * 3).tobytes()

    _rewrite_dicom(path, change)
    return path


def break_missing_key(root: Path) -> Path:
    path = root / "train" / "label" / "002.mat"
    write_mat(path, _mask(root), key="labels")
    return path


def break_mask_shape(root: Path) -> Path:
    path = root / "train" / "label" / "002.mat"
    write_mat(path, _mask(root)[:60])
    return path


def break_channels(root: Path) -> Path:
    path = root / "train" / "label" / "002.mat"
    write_mat(path, _mask(root)[..., 1:])
    return path


def break_non_binary(root: Path) -> Path:
    path = root / "train" / "label" / "002.mat"
    mask = _mask(root)
    mask[10, 10, 6] = 3
    write_mat(path, mask, version="7.3")
    return path


def break_overlap(root: Path) -> Path:
    path = root / "train" / "label" / "002.mat"
    mask = _mask(root)
    mask[..., 1] |= mask[..., 0]
    write_mat(path, mask)
    return path


def break_not_mat(root: Path) -> Path:
    path = root / "train" / "label" / "002.mat"
    path.write_bytes(np.random.default_rng(2).bytes(3000))
    return path


def break_truncated_mat(root: Path) -> Path:
    path = root / "train" / "label" / "002.mat"
    write_mat(path, _mask(root), version="7.3")
    path.write_bytes(path.read_bytes()[:1500])
    return path


def break_no_label(root: Path) -> Path:
    (root / "train" / "label" / "002.mat").unlink()
    return root / "train" / "img" / "002.dcm"


def break_test_image(root: Path) -> Path:
    path = root / "test" / "img" / "502.dcm"
    path.write_bytes(path.read_bytes()[:300])
    return path


BREAKERS = {
    # name: (breaker, bad case id, words the message must hold)
    "truncated-dicom": (break_truncated, "002", ["truncated"]),
    "no-pixel-data": (break_no_pixel_data, "002", ["no pixel data"]),
    "unsupported-syntax": (break_unsupported_syntax, "002", ["unsupported transfer syntax", MPEG2MPML]),
    "colour": (break_colour, "002", ["colour image", "RGB"]),
    "multi-frame": (break_multi_frame, "002", ["multi-frame", "3 frames"]),
    "mat-without-key": (break_missing_key, "002", ["no variable 'label_separated'", "labels"]),
    "mask-shape": (break_mask_shape, "002", ["mask is 60x48 but image is 64x48"]),
    "channels": (break_channels, "002", ["mask has 6 channels, expected 7"]),
    "non-binary": (break_non_binary, "002", ["not binary", "3"]),
    "overlap": (break_overlap, "002", ["no label layout fits", "overlap"]),
    "not-a-mat-file": (break_not_mat, "002", ["MATLAB .mat file"]),
    "truncated-v73-mat": (break_truncated_mat, "002", ["MATLAB .mat file"]),
    "no-label": (break_no_label, "002", ["has no label", "002.mat"]),
    "bad-test-image": (break_test_image, "502", ["truncated"]),
}


@pytest.mark.parametrize("name", BREAKERS)
def test_bad_input(name: str, challenge_dir: Path, tmp_path: Path, run_convert: Convert,
                   tree_hash: Callable[[Path], dict[str, str]]) -> None:
    breaker, bad_id, words = BREAKERS[name]
    bad_file = breaker(challenge_dir)
    before = tree_hash(challenge_dir)
    out = tmp_path / "out"
    report = run_convert(challenge_dir, out)
    assert len(report.bad) == 1, report.bad
    _, message = report.bad[0]
    assert "\n" not in message
    assert message.startswith(f"{bad_file}: "), message
    cause = message.removeprefix(f"{bad_file}: ")
    for word in words:  # in the cause, not in the (test-named) path
        assert word in cause, message
    assert sorted(report.converted) == [i for i in ALL_IDS if i != bad_id]
    assert not any(p.exists() for p in outputs_of(out, bad_id))
    ds = dataset_json(out)
    assert ds["bad"] == [message]
    assert bad_id not in [r["id"] for r in ds["training"] + ds["test"]]
    assert stray_files(out) == []
    assert tree_hash(challenge_dir) == before  # inputs untouched


def test_label_without_image(challenge_dir: Path, tmp_path: Path, run_convert: Convert) -> None:
    orphan = challenge_dir / "train" / "label" / "009.mat"
    shutil.copyfile(challenge_dir / "train" / "label" / "001.mat", orphan)
    report = run_convert(challenge_dir, tmp_path / "out")
    assert report.bad == [(str(orphan), f"{orphan}: label has no image in train/img")]
    assert sorted(report.converted) == ALL_IDS


def test_duplicate_case_id(challenge_dir: Path, tmp_path: Path, run_convert: Convert) -> None:
    copy = challenge_dir / "test" / "img" / "001.dcm"
    shutil.copyfile(challenge_dir / "train" / "img" / "001.dcm", copy)
    report = run_convert(challenge_dir, tmp_path / "out")
    messages = sorted(message for _, message in report.bad)
    assert len(messages) == 2
    assert all("duplicate case id '001'" in m and "\n" not in m for m in messages)
    assert any(str(copy) in m for m in messages)
    assert any(str(challenge_dir / "train" / "img" / "001.dcm") in m for m in messages)
    assert sorted(report.converted) == [i for i in ALL_IDS if i != "001"]
    assert not any(p.exists() for p in outputs_of(tmp_path / "out", "001"))


def test_two_labels_for_one_case(challenge_dir: Path, tmp_path: Path, run_convert: Convert) -> None:
    label = challenge_dir / "train" / "label" / "002.mat"
    shutil.copyfile(label, label.with_suffix(".MAT"))
    report = run_convert(challenge_dir, tmp_path / "out")
    bad = dict(report.bad)
    image = str(challenge_dir / "train" / "img" / "002.dcm")
    assert bad[image].endswith("2 labels for this case (002.MAT, 002.mat); none used")
    assert set(bad) == {image, str(label), str(label.with_suffix(".MAT"))}
    assert sorted(report.converted) == [i for i in ALL_IDS if i != "002"], "002 is neither trained on nor a test case"


def test_empty_structure_is_a_warning(challenge_dir: Path, tmp_path: Path, run_convert: Convert) -> None:
    mask = _mask(challenge_dir)
    mask[..., 6] |= mask[..., 2]
    mask[..., 2] = 0
    write_mat(challenge_dir / "train" / "label" / "002.mat", mask)
    report = run_convert(challenge_dir, tmp_path / "out")
    assert report.bad == [] and sorted(report.converted) == ALL_IDS
    expected = "002.mat: structure 3 is empty"
    assert expected in report.warnings
    ds = dataset_json(tmp_path / "out")
    assert expected in ds["warnings"]
    assert expected in next(r for r in ds["training"] if r["id"] == "002")["warnings"]
    assert not [w for w in report.warnings if "is empty" in w and not w.startswith("002.mat")]
    label = read_nifti(tmp_path / "out" / "labelsTr" / "002.nii.gz")
    assert 3 not in label and set(np.unique(label)) == {0, 1, 2, 4, 5, 6}


def test_flat_folder(tmp_path: Path, run_convert: Convert) -> None:
    src = tmp_path / "flat"
    src.mkdir()
    masks = {}
    for number, has_mask in ((1, True), (2, True), (7, False)):
        image, class_map = make_phantom((64, 48), seed=number)
        write_dicom(src / f"{number:03d}.dcm", image)
        if has_mask:
            masks[f"{number:03d}"] = from_class_map(class_map, "background-last", 7)
            write_mat(src / f"{number:03d}.mat", masks[f"{number:03d}"])
    report = run_convert(src, tmp_path / "out")
    assert report.bad == [] and sorted(report.converted) == ["001", "002", "007"]
    ds = dataset_json(tmp_path / "out")
    assert [r["id"] for r in ds["training"]] == ["001", "002"]
    assert [r["id"] for r in ds["test"]] == ["007"]
    for case_id, mask in masks.items():
        label = read_nifti(tmp_path / "out" / "labelsTr" / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(from_class_map(label, "background-last", 7), mask)


def test_structure_names(challenge_dir: Path, tmp_path: Path, run_convert: Convert) -> None:
    names = ["T12", "L1", "L2", "L3", "L4", "L5"]
    run_convert(challenge_dir, tmp_path / "out", structure_names=names)
    assert dataset_json(tmp_path / "out")["labels"] == {"0": "background", **dict(zip("123456", names, strict=True))}
    with pytest.raises(ValueError, match="5 structure names given for 6 or 7 structures"):
        run_convert(challenge_dir, tmp_path / "out2", structure_names=names[:5])
    assert not (tmp_path / "out2").exists()  # refused before converting anything
    with pytest.raises(ValueError, match="7 structure names given for 6 structures"):  # one-hot's count; layout found
        run_convert(challenge_dir, tmp_path / "out3", structure_names=[*names, "S1"])


# --- batch behaviour ---------------------------------------------------------------------------------------------


def test_another_source_is_not_mixed_into_a_conversion(make_challenge: Callable[..., Path], tmp_path: Path,
                                                        run_convert: Convert,
                                                        tree_hash: Callable[[Path], dict[str, str]]) -> None:
    """Two data sets with the same case ids (001, 002, ...) must not replace each other's cases in one folder,
    as a make target run with another RAW= would; a new copy of the same data set may, with --new-source."""
    ours = make_challenge("ours", n_train=4, n_test=1)
    run_convert(ours, tmp_path / "out")
    assert dataset_json(tmp_path / "out")["source"] == str(ours.resolve())
    before = tree_hash(tmp_path / "out")
    other = make_challenge("other", n_train=5, n_test=0, seed=7)
    with pytest.raises(ValueError, match=f"out holds a conversion of {ours.resolve()}; converting {other} into it "
                                         "would mix two data sets"):
        run_convert(other, tmp_path / "out")
    assert tree_hash(tmp_path / "out") == before, "nothing written"
    args = [str(other), str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    assert tree_hash(tmp_path / "out") == before
    assert main([*args, "--new-source"]) == 0
    assert dataset_json(tmp_path / "out")["source"] == str(other.resolve())
    assert dataset_json(tmp_path / "out")["numTraining"] == 5


def test_rerun_skips_and_reconverts_changed_cases(challenge_dir: Path, tmp_path: Path, run_convert: Convert,
                                                  tree_hash: Callable[[Path], dict[str, str]]) -> None:
    break_truncated(challenge_dir)  # 002 stays bad throughout
    before = tree_hash(challenge_dir)
    out = tmp_path / "out"
    first = run_convert(challenge_dir, out)
    assert sorted(first.converted) == ["001", "003", "004", "501", "502"]
    assert tree_hash(challenge_dir) == before
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    first_json = dataset_json(out)

    second = run_convert(challenge_dir, out)
    assert second.converted == []
    assert sorted(second.skipped) == ["001", "003", "004", "501", "502"]
    assert [m for _, m in second.bad] == [m for _, m in first.bad]  # a bad case is retried, still bad
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamps
    assert dataset_json(out) == first_json

    # Change one label and one test image: just those two cases are converted again.
    mask = _mask(challenge_dir, "003")
    mask[..., 6] |= mask[..., 5]
    mask[..., 5] = 0
    write_mat(challenge_dir / "train" / "label" / "003.mat", mask)
    image, _ = make_phantom((64, 48), seed=99)
    write_dicom(challenge_dir / "test" / "img" / "501.dcm", image)
    third = run_convert(challenge_dir, out)
    assert sorted(third.converted) == ["003", "501"]
    assert sorted(third.skipped) == ["001", "004", "502"]
    np.testing.assert_array_equal(read_nifti(out / "labelsTr" / "003.nii.gz"), to_class_map(mask, "background-last"))
    np.testing.assert_array_equal(read_nifti(out / "imagesTs" / "501.nii.gz"), image)
    records = {r["id"]: r for r in dataset_json(out)["training"]}
    assert records["003"]["sha1"] == sha1(challenge_dir / "train" / "img" / "003.dcm",
                                          challenge_dir / "train" / "label" / "003.mat")
    assert "003.mat: structure 6 is empty" in dataset_json(out)["warnings"]

    # A deleted output is rebuilt; other options invalidate everything.
    (out / "imagesTr" / "004.nii.gz").unlink()
    assert run_convert(challenge_dir, out).converted == ["004"]
    forced = run_convert(challenge_dir, out, Options(label_layout="background-last"))
    assert sorted(forced.converted) == ["001", "003", "004", "501", "502"] and forced.skipped == []
    assert stray_files(out) == []


def test_workers_give_the_same_outputs(make_challenge: Callable[..., Path], tmp_path: Path,
                                       run_convert: Convert, tree_hash: Callable[[Path], dict[str, str]]) -> None:
    # Cases 003, 006 and 503 are larger, so with 2 workers they finish out of submission order.
    src = make_challenge(n_train=6, n_test=3, shapes=[(64, 48), (64, 48), (640, 480)])
    break_truncated(src)
    (src / "train" / "label" / "005.mat").write_bytes(b"not a mat file")
    one = run_convert(src, tmp_path / "one", workers=1)
    two = run_convert(src, tmp_path / "two", workers=2)
    assert len(one.bad) == 2
    assert one.converted == two.converted
    assert one.bad == two.bad
    assert one.warnings == two.warnings
    assert tree_hash(tmp_path / "one") == tree_hash(tmp_path / "two")  # NIfTI and dataset.json byte for byte


def test_cli_workers_option(challenge_dir: Path, tmp_path: Path, tree_hash: Callable[[Path], dict[str, str]]) -> None:
    assert main([str(challenge_dir), str(tmp_path / "one"), "--workers", "1", "--no-progress"]) == 0
    assert main([str(challenge_dir), str(tmp_path / "two"), "--workers", "2", "--no-progress"]) == 0
    assert tree_hash(tmp_path / "one") == tree_hash(tmp_path / "two")


def test_exit_codes(challenge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def run(src: Path, out: Path, *extra: str) -> int:
        return main([str(src), str(out), "--workers", "1", "--no-progress", *extra])

    assert run(challenge_dir, tmp_path / "good") == 0
    assert "converted      6" in capsys.readouterr().out
    assert run(challenge_dir, tmp_path / "good") == 0  # all skipped is fine
    assert run(challenge_dir, tmp_path / "good", "--strict") == 0

    break_colour(challenge_dir)
    assert run(challenge_dir, tmp_path / "one-bad") == 0
    assert "colour image" in capsys.readouterr().out
    assert run(challenge_dir, tmp_path / "one-bad-strict", "--strict") == 1

    only_bad = tmp_path / "only-bad"
    (only_bad / "train" / "img").mkdir(parents=True)
    shutil.copyfile(challenge_dir / "train" / "img" / "002.dcm", only_bad / "train" / "img" / "002.dcm")
    assert run(only_bad, tmp_path / "none") == 1  # nothing converted (the one image has no label)

    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert run(empty, tmp_path / "nothing") == 2  # nothing to convert is an error, said in one line
    assert f"error: {empty}: no DICOM files" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()
    assert run(challenge_dir / "train" / "img" / "002.dcm", tmp_path / "nothing") == 2
    assert "002.dcm: not a folder" in capsys.readouterr().err


def test_failed_write_leaves_no_partial_file(challenge_dir: Path, tmp_path: Path, run_convert: Convert,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    run_convert(challenge_dir, out)
    old_label = (out / "labelsTr" / "002.nii.gz").read_bytes()
    mask = _mask(challenge_dir)
    mask[..., 6] |= mask[..., 0]
    mask[..., 0] = 0
    write_mat(challenge_dir / "train" / "label" / "002.mat", mask)

    real_save = nib.save

    def failing_save(img: nib.Nifti1Image, filename: Path) -> None:
        real_save(img, filename)  # the temporary file is complete ...
        with open(filename, "r+b") as f:
            f.truncate(10)  # ... then damaged, as by a crash mid-write
        raise OSError("disk full")

    monkeypatch.setattr(spine_seg.nifti_io.nib, "save", failing_save)
    report = run_convert(challenge_dir, out, workers=1)
    assert [case for case, _ in report.bad] == [str(challenge_dir / "train" / "img" / "002.dcm")]
    assert "disk full" in report.bad[0][1]
    assert (out / "labelsTr" / "002.nii.gz").read_bytes() == old_label  # the old output is intact
    assert stray_files(out) == []


# --- the real data -----------------------------------------------------------------------------------------------


def test_real_data(real_data: Path, real_converted: tuple[Path, Report]) -> None:
    """Every real case converts: labels in 0..6 on the DICOM's rows x columns, layout background-last."""
    out, report = real_converted
    assert report.bad == []
    train_images = sorted((real_data / "train" / "img").glob("*.dcm"))
    test_images = sorted((real_data / "test" / "img").glob("*.dcm"))
    assert sorted(report.converted) == sorted(p.stem for p in train_images + test_images)
    ds = dataset_json(out)
    assert ds["label_layout"] == "background-last"
    assert ds["numTraining"] == len(train_images) and ds["numTest"] == len(test_images)
    assert [w for w in report.warnings if "differs" in w] == []
    records = {r["id"]: r for r in ds["training"] + ds["test"]}
    for image in train_images + test_images:
        header = pydicom.dcmread(image, stop_before_pixels=True)
        record = records[image.stem]
        assert record["shape"] == [header.Rows, header.Columns], image
        assert nib.load(out / record["image"]).shape[:2] == (header.Rows, header.Columns), image
    for step, record in enumerate(ds["training"]):
        assert record["label_layout"] == "background-last"
        assert record["fold"] in range(5)
        label = read_nifti(out / record["label"])
        assert label.dtype == np.uint8 and list(label.shape) == record["shape"], record["id"]
        assert label.max() <= 6, record["id"]
        if step % 10 == 0:  # a bit-for-bit check against the .mat on every tenth case
            mask = read_mask(real_data / "train" / "label" / f"{record['id']}.mat")
            np.testing.assert_array_equal(from_class_map(label, "background-last", 7), mask)


def test_a_dying_worker_costs_only_the_unfinished_cases(challenge_dir: Path, tmp_path: Path, run_convert: Convert,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = convert_module.convert_case

    def dying(case: object, out: Path, options: object) -> dict:
        if getattr(case, "case_id", "") == "002":
            os._exit(137)  # what an out-of-memory kill looks like to the pool
        return real(case, out, options)

    monkeypatch.setattr(convert_module, "convert_case", dying)  # the forked workers inherit it
    report = run_convert(challenge_dir, tmp_path / "out", workers=2)
    bad = dict(report.bad)
    assert any("002.dcm: not converted: a worker process died" in m for m in bad.values())
    assert all("worker process died" in m for m in bad.values()), bad
    ds = dataset_json(tmp_path / "out")  # what finished is recorded; the rest is converted on the next run
    assert sorted(r["id"] for r in ds["training"] + ds["test"]) == sorted(report.converted)
    monkeypatch.setattr(convert_module, "convert_case", real)
    again = run_convert(challenge_dir, tmp_path / "out", workers=2)
    assert again.bad == [] and sorted(again.converted + again.skipped) == ALL_IDS
