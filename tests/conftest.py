"""Shared fixtures: small synthetic challenge folders, an input-tree hasher and the real AASCE data."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from monai.bundle import ConfigParser

from data_prep.convert import Report, convert
from spine_seg.nifti_io import read_nifti, write_nifti
from spine_seg.phantom import write_challenge_folder
from spine_seg.predict import DEFAULT_BUNDLE, bundle_structure_names

# Small, non-square and asymmetric so that a swapped or flipped axis changes the shape or the content.
SMALL_SHAPE = (64, 48)
# ../shared/data/aasce relative to the repository root.
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aasce"


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """Factory: ``load_benchmark(name)`` imports ``benchmarks/<name>.py`` (a script folder, not a package)."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module

    return load


@pytest.fixture
def small_shape() -> tuple[int, int]:
    return SMALL_SHAPE


@pytest.fixture
def challenge_dir(tmp_path: Path) -> Path:
    """``raw/`` with train/img + train/label (ids 001..004) and test/img (501, 502): 64 x 48 phantoms."""
    return write_challenge_folder(tmp_path / "raw", n_train=4, n_test=2, shape=SMALL_SHAPE, seed=0)


@pytest.fixture
def make_challenge(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_challenge(name, **kwargs)`` writes a challenge folder ``tmp_path/name``."""

    def make(name: str = "raw", **kwargs: object) -> Path:
        kwargs.setdefault("shape", SMALL_SHAPE)
        return write_challenge_folder(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make


def hash_tree(root: Path) -> dict[str, str]:
    """Relative path -> sha1 of the content, for every file under ``root`` (also hidden ones)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def tree_hash() -> Callable[[Path], dict[str, str]]:
    return hash_tree


def read_bundle_config(*names: str, dataset_dir: Path | None = None) -> ConfigParser:
    """The bundle's ``configs/<name>`` files, read in order (later ones override earlier ones), with
    ``dataset_dir`` set when given."""
    parser = ConfigParser()
    parser.read_config([str(DEFAULT_BUNDLE / "configs" / name) for name in names])
    if dataset_dir is not None:
        parser["dataset_dir"] = str(dataset_dir)
    return parser


@pytest.fixture(scope="session")
def shipped_labels_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder whose ``dataset.json`` holds only the labels of the shipped model (background, T12-L5),
    from which ``train.json`` takes its class count."""
    root = tmp_path_factory.mktemp("labels-only")
    labels = {"0": "background", **{str(k): name for k, name in enumerate(bundle_structure_names(), 1)}}
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "training": []}))
    return root


@pytest.fixture
def bundle_config(shipped_labels_dataset: Path) -> Callable[..., ConfigParser]:
    """:func:`read_bundle_config` on a dataset with the shipped model's labels (no images)."""
    return lambda *names: read_bundle_config(*names, dataset_dir=shipped_labels_dataset)


@pytest.fixture
def run_convert() -> Callable[..., Report]:
    """``convert`` without the progress bar."""

    def run(src: Path, out: Path, *args: object, **kwargs: object) -> Report:
        kwargs.setdefault("progress", False)
        return convert(src, out, *args, **kwargs)  # type: ignore[arg-type]

    return run


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real AASCE challenge-format folder; the test is skipped (with the reason) when it is absent."""
    if not (REAL_DATA / "train" / "img").is_dir():
        pytest.skip(f"real AASCE data not found at {REAL_DATA} (expected train/img, train/label, test/img)")
    return REAL_DATA


@pytest.fixture(scope="session")
def real_converted(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Report]:
    """The real data converted once per session with 2 workers (about a minute)."""
    out = tmp_path_factory.mktemp("aasce_converted")
    report = convert(real_data, out, workers=2, progress=False)
    return out, report


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-init (seed 0) checkpoint of the bundle's network and its TorchScript and ONNX exports.

    Keys: ``ckpt`` (state dict ``.pt``), ``torchscript`` (``model.ts``), ``onnx`` (``model.onnx``).
    """
    import torch

    from spine_seg.model_export import build_network, export_model

    out = tmp_path_factory.mktemp("exported_model")
    torch.manual_seed(0)
    torch.save(build_network().state_dict(), out / "model.pt")
    return {"ckpt": out / "model.pt", **export_model(out / "model.pt", out)}


@pytest.fixture(scope="session")
def onnx_predicted(exported_model: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(raw, out)``: two test phantoms (200 x 100 and 150 x 420) in ``raw/test/img`` and what
    ``spine-seg predict --backend onnx --dicom-seg`` wrote for them with :func:`exported_model` in ``out``."""
    from spine_seg.cli import main as cli_main

    root = tmp_path_factory.mktemp("onnx_predicted")
    raw = write_challenge_folder(root / "raw", n_train=0, n_test=2, shapes=[(200, 100), (150, 420)])
    out = root / "out"
    argv = ["predict", str(raw / "test" / "img"), "--out", str(out), "--backend", "onnx", "--dicom-seg"]
    assert cli_main([*argv, "--weights", str(exported_model["onnx"]), "--no-progress", "--no-overlay"]) == 0
    return raw, out


@pytest.fixture
def expert_cascade(make_challenge: Callable[..., Path], run_convert: Callable[..., Report], tmp_path: Path) -> tuple:
    """Ten converted 160 x 64 phantoms and an evaluation folder whose ``pred/`` holds fold 0's expert labels (a
    "cascade" that names every case right at a Dice of 1): ``(dataset.json, eval folder, fold-0 cases)``."""
    data = tmp_path / "data"
    run_convert(make_challenge("raw", n_train=10, n_test=0, shape=(160, 64)), data)
    val = [c for c in json.loads((data / "dataset.json").read_text())["training"] if c["fold"] == 0]
    (tmp_path / "eval" / "pred").mkdir(parents=True)
    for case in val:
        write_nifti(tmp_path / "eval" / "pred" / f"{case['id']}_seg.nii.gz", read_nifti(data / case["label"]))
    return data / "dataset.json", tmp_path / "eval", val
