"""benchmarks/label_style.py: the case groups, vertebra axes and sizes, the per-vertebra scaling, the regression, and a
run on a small synthetic set whose two groups draw their vertebrae at different widths."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from spine_seg.nifti_io import write_nifti


@pytest.fixture(scope="module")
def label_style(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("label_style")


def ellipse(shape: tuple[int, int], centre: tuple[float, float], half: tuple[float, float], angle: float) -> np.ndarray:
    """Boolean ellipse: half-axes ``half`` (along the column axis turned by ``angle`` rad, then across it; px)."""
    r, c = np.mgrid[: shape[0], : shape[1]] - np.array(centre)[:, None, None]
    u = c * np.cos(angle) + r * np.sin(angle)
    v = -c * np.sin(angle) + r * np.cos(angle)
    return (u / half[0]) ** 2 + (v / half[1]) ** 2 <= 1


def test_source_groups_read_the_year_of_each_source_file(label_style: ModuleType, tmp_path: Path) -> None:
    tsv = tmp_path / "cases.tsv"
    tsv.write_text("split\tsource_file\tcase\tstatus\n"
                   "training\tsunhl-1th-02-Jan-2017-162 A AP.jpg\t001\tok\n"
                   "training\tsunhl-1th-03-Jan-2017-163 B AP.jpg\t\texcluded: overlap\n"
                   "training\tsunhl-1th-25-Jul-2016-52 A AP.jpg\t002\tok\n")
    assert label_style.source_groups(tsv) == {"001": "2017", "002": "2016"}


def test_principal_axes_of_a_tilted_ellipse(label_style: ModuleType) -> None:
    mask = ellipse((200, 200), (100, 90), (60, 25), 0.3)
    centre, axes, spread = label_style.principal_axes(mask)
    np.testing.assert_allclose(centre, (100, 90), atol=0.1)
    # the major axis (row, column) points along the turned column axis; a filled ellipse's rms is half-axis / 2
    assert abs(abs(axes[:, 0] @ np.array([np.sin(0.3), np.cos(0.3)])) - 1) < 1e-3
    np.testing.assert_allclose(spread, (30, 12.5), rtol=0.02)


def test_scaling_a_vertebra_is_measured_back_by_its_size_ratio(label_style: ModuleType) -> None:
    label = np.zeros((240, 200), np.uint8)
    label[ellipse(label.shape, (80, 100), (50, 22), 0.25)] = 1
    label[ellipse(label.shape, (160, 104), (55, 24), -0.1)] = 2
    assert np.array_equal(label_style.scale_vertebrae(label, (1.0, 1.0), 2), label)
    scaled = label_style.scale_vertebrae(label, (1.2, 0.9), 2)
    np.testing.assert_allclose(label_style.size_ratios(scaled, label, 2), [[1.2, 0.9]] * 2, rtol=0.03)
    # a vertebra drawn on another body (Dice under 0.5) is left out of the ratios
    wrong = np.where(label == 2, 1, 0).astype(np.uint8)
    assert label_style.size_ratios(wrong, label, 2).shape == (0, 2)


def test_the_upper_vertebra_keeps_the_pixels_where_two_grow_into_each_other(label_style: ModuleType) -> None:
    label = np.zeros((100, 60), np.uint8)
    label[20:40, 10:50], label[41:61, 10:50] = 1, 2
    grown = label_style.scale_vertebrae(label, (1.0, 1.3), 2)
    assert (grown == 1).sum() > (label == 1).sum()
    assert (grown[39:42, 20:40] == 1).all() and (label[41, 20:40] == 2).all()  # both reach rows 39-41: to 1


def test_logistic_regression_separates_two_groups(label_style: ModuleType) -> None:
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, (40, 3)), rng.normal(0, 1, (40, 3)) + [3, 0, 0]]
    y = np.r_[np.zeros(40), np.ones(40)]
    prob = label_style.fit_logistic(x, y, 0.01)(x)
    assert np.mean((prob > 0.5) == y) > 0.9
    assert prob[y == 1].mean() > 0.8 > 0.2 > prob[y == 0].mean()


def test_image_features(label_style: ModuleType) -> None:
    image = np.random.default_rng(1).integers(0, 256, (300, 100)).astype(np.uint8)
    features = label_style.image_features(image)
    assert features.shape == (17,) and np.isfinite(features).all()
    np.testing.assert_allclose(features[:3], np.log([300, 100, 3]))


def test_runs_on_a_set_whose_groups_draw_at_two_widths(
    label_style: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cascade's stand-in draws every vertebra at the bone's width; the 2016 group's experts drew them 1.25x
    wider. Its images are darker, so the image statistics can tell the groups."""
    shape, cases, rows = (160, 80), [], ["split\tsource_file\tcase\tstatus"]
    for d in ("imagesTr", "labelsTr", "eval0/pred", "eval1/pred"):
        (tmp_path / d).mkdir(parents=True)
    for i in range(12):
        cid, fold, year = f"{i:03d}", i % 3, ("2016", "2017")[i % 2]
        rows.append(f"training\tsunhl-1th-0{i % 9 + 1}-Jan-{year}-{i} A AP.jpg\t{cid}\tok")
        bone, expert = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        for k, centre in enumerate(((50, 40), (100, 41)), start=1):
            bone[ellipse(shape, centre, (18, 10), 0.05 * i)] = k
            expert[ellipse(shape, centre, (18 * (1.25 if year == "2016" else 1.0), 10), 0.05 * i)] = k
        image = np.random.default_rng(i).integers(0, 60, shape) + (60 if year == "2016" else 150) + 30 * (bone > 0)
        write_nifti(tmp_path / "imagesTr" / f"{cid}.nii.gz", image.astype(np.uint8))
        write_nifti(tmp_path / "labelsTr" / f"{cid}.nii.gz", expert)
        if fold < 2:
            write_nifti(tmp_path / f"eval{fold}" / "pred" / f"{cid}_seg.nii.gz", bone)
        cases.append({"id": cid, "image": f"imagesTr/{cid}.nii.gz", "label": f"labelsTr/{cid}.nii.gz", "fold": fold})
    (tmp_path / "cases.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "A", "2": "B"},
                                                       "training": cases}))
    label_style.main(["--dataset-json", str(tmp_path / "dataset.json"), "--cases-tsv", str(tmp_path / "cases.tsv"),
                      "--eval-dir", str(tmp_path / "eval0"), "--fit-eval-dir", str(tmp_path / "eval1"),
                      "--l2", "0.01"])
    out = capsys.readouterr().out
    assert re.search(r"2016: 4 vertebrae; width 0\.8\d\d", out)  # 1 / 1.25 = 0.8
    assert re.search(r"2017: 4 vertebrae; width 1\.0[0-2]\d", out)
    assert "accuracy 1.000 over the training folds" in out
    scores = {name: float(v) for name, v in re.findall(r"^  (.+?): (0\.\d{4})", out, re.M)}
    assert scores["as predicted"] < 0.95 < scores["group known"]
    assert scores["group from the image"] > 0.95
    groups = dict(re.findall(r"^  (2016|2017) \((\d+) cases", out, re.M))
    assert groups == {"2016": "2", "2017": "2"}
    # every case at 2016's (wider) size: right for its own cases, too wide for 2017's, so it pays off only on a set
    # with enough 2016 cases
    assert scores["all at 2016's size"] < scores["group known"]
    by_group = {g: dict(re.findall(r"(all at 2016's size|as predicted) ([01]\.\d{4})", line))
                for g, line in re.findall(r"^  (2016|2017) (\(\d+ cases, .*)$", out, re.M)}
    assert float(by_group["2016"]["all at 2016's size"]) > 0.95 > float(by_group["2016"]["as predicted"])
    assert float(by_group["2017"]["all at 2016's size"]) < float(by_group["2017"]["as predicted"])
    share = re.search(r"all at 2016's size beats as predicted on a set where more than (\d+)% of the cases", out)
    assert share and 0 < int(share.group(1)) < 100
