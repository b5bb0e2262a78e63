"""Integration: the real MONAI Label server (``monaibundle`` sample app, offline) serves the bundle.

Needs ``.venv-label`` (``make label-install``; ``make test`` runs it). Without it the test fails, it is not
skipped. Starts the server on a free loopback port, sends one phantom to ``/infer/<model>``, checks the
returned mask against the bundle's own inference (``monai.bundle run`` in this environment), stops it.
Bad requests (unknown image, a 3D or colour image, a bundle without weights) must get an error that says
what is wrong, and the server must go on serving.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from spine_seg.label_app import MODEL_NAME, label_python, prepare_app, start_server
from spine_seg.label_app import main as label_main
from spine_seg.label_bundle import write_label_bundle
from spine_seg.model_export import build_network
from spine_seg.nifti_io import write_nifti
from spine_seg.phantom import make_phantom

REPO = Path(__file__).resolve().parents[1]
SHAPE = (600, 300)
START_TIMEOUT_S = 180.0
INFER_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def _post_infer(url: str) -> bytes:
    """POST ``params={}`` as multipart form data (what MONAI Label's /infer expects) and return the body."""
    boundary = "spinesegboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n--{boundary}--\r\n').encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=INFER_TIMEOUT_S) as resp:  # noqa: S310 - loopback only
        assert resp.status == 200
        return resp.read()


@pytest.fixture(scope="module")
def phantom_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``studies/``: ``phantom.nii.gz`` (a 600 x 300 phantom radiograph) and two images of the wrong kind:
    ``volume.nii.gz`` (60 x 40 x 5, a 3D volume) and ``colour.nii.gz`` (120 x 80 x 3, RGB)."""
    studies = tmp_path_factory.mktemp("studies")
    image, _ = make_phantom(SHAPE, seed=3)
    write_nifti(studies / "phantom.nii.gz", image)
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.integers(0, 255, (60, 40, 5)).astype(np.uint8), np.eye(4)), studies / "volume.nii.gz")
    nib.save(nib.Nifti1Image(rng.integers(0, 255, (120, 80, 3)).astype(np.uint8), np.eye(4)), studies / "colour.nii.gz")
    return studies


@contextmanager
def serve(app: Path, studies: Path, log: Path) -> Iterator[str]:
    """Base URL of a running MONAI Label server for ``app``; the process group is always terminated after."""
    port = _free_port()
    proc = start_server(app, studies, port, log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"MONAI Label exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                _get_json(f"{base}/info/")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"no /info/ after {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
                time.sleep(1.0)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


@pytest.fixture(scope="module")
def label_server(phantom_studies: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a running MONAI Label server with the bundle."""
    label_python()  # a clear FileNotFoundError ("run `make label-install`") instead of a skip
    root = tmp_path_factory.mktemp("label")
    with serve(prepare_app(root / "apps"), phantom_studies, root / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def bundle_prediction(phantom_studies: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The bundle's own inference (``monai.bundle run`` with inference.json) on the same phantom."""
    root = tmp_path_factory.mktemp("bundle_run")
    return bundle_run_prediction(REPO / "bundle", phantom_studies, root)


def bundle_run_prediction(bundle: Path, studies: Path, root: Path) -> np.ndarray:
    """``monai.bundle run`` with ``bundle``'s inference.json on ``studies/phantom.nii.gz``, in ``root``."""
    (root / "data" / "imagesTs").mkdir(parents=True, exist_ok=True)
    (root / "data" / "imagesTs" / "phantom.nii.gz").write_bytes((studies / "phantom.nii.gz").read_bytes())
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--bundle_root", str(bundle), "--dataset_dir", str(root / "data"), "--output_dir", str(root / "pred")]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return np.asarray(nib.load(root / "pred" / "phantom_seg.nii.gz").dataobj)


def test_info_lists_the_bundle(label_server: str) -> None:
    info = _get_json(f"{label_server}/info/")
    model = info["models"][MODEL_NAME]
    assert model["type"] == "segmentation"
    assert model["dimension"] == 2
    assert model["labels"] == {"t12": 1, "l1": 2, "l2": 3, "l3": 4, "l4": 5, "l5": 6}
    assert "sam_2d" not in info["models"], "SAM2 must be off (its weights need the network)"


def test_infer_returns_the_bundle_prediction(label_server: str, bundle_prediction: np.ndarray,
                                             phantom_studies: Path, tmp_path: Path) -> None:
    body = _post_infer(f"{label_server}/infer/{MODEL_NAME}?image=phantom&output=image")
    out = tmp_path / "label_pred.nii.gz"
    out.write_bytes(body)
    mask = np.asarray(nib.load(out).dataobj)
    assert mask.shape == SHAPE, f"MONAI Label returned shape {mask.shape}, expected the image's R x C {SHAPE}"
    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= set(range(7))
    assert len(np.unique(mask)) > 1, "an all-background mask means the model did not run"
    assert bundle_prediction.shape == SHAPE
    np.testing.assert_array_equal(mask, bundle_prediction)
    # the same affine as the image, so that a viewer (3D Slicer) places the mask on the radiograph
    np.testing.assert_allclose(nib.load(out).affine, nib.load(phantom_studies / "phantom.nii.gz").affine)


def _infer_error(label_server: str, image: str) -> tuple[int, str]:
    """``(HTTP status, body)`` of an inference request that must fail."""
    with pytest.raises(urllib.error.HTTPError) as err:
        _post_infer(f"{label_server}/infer/{MODEL_NAME}?image={image}&output=image")
    return err.value.code, err.value.read().decode(errors="replace")


def test_unknown_image_is_named_and_the_server_keeps_serving(label_server: str) -> None:
    status, body = _infer_error(label_server, "no-such-radiograph")
    assert 400 <= status < 600
    assert "no-such-radiograph" in body, body[:500]
    assert len(_post_infer(f"{label_server}/infer/{MODEL_NAME}?image=phantom&output=image")) > 0


@pytest.mark.parametrize("image", ["volume", "colour"])
def test_image_of_the_wrong_kind_is_refused_with_the_cause(label_server: str, image: str) -> None:
    status, body = _infer_error(label_server, image)
    assert 400 <= status < 600
    assert f"{image}.nii.gz: not a 2D grayscale radiograph" in body, body[:500]
    assert len(_post_infer(f"{label_server}/infer/{MODEL_NAME}?image=phantom&output=image")) > 0


def test_bundle_without_weights(phantom_studies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``make label-serve`` refuses a bundle without weights; a server started on it anyway keeps serving."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundle", bundle, ignore=shutil.ignore_patterns("model.*", "__pycache__"))
    assert not list((bundle / "models").glob("model.*"))
    with pytest.raises(FileNotFoundError, match=r"models/model.pt: no trained weights to serve"):
        prepare_app(tmp_path / "apps", bundle)
    assert label_main(["--studies", str(phantom_studies), "--bundle", str(bundle),
                       "--app-root", str(tmp_path / "apps")]) == 1
    assert "model.pt: no trained weights to serve" in capsys.readouterr().err
    # Started directly, MONAI Label 0.8.5 still registers the half-initialised model; label_asgi answers 404
    # naming the model and the likely cause, and the server goes on answering.
    app = prepare_app(tmp_path / "apps", bundle, require_weights=False)
    with serve(app, phantom_studies, tmp_path / "server.log") as base:
        assert MODEL_NAME not in _get_json(f"{base}/info/")["models"]
        status, body = _infer_error(base, "phantom")
        assert status == 404 and f"no model '{MODEL_NAME}' is loaded: its bundle has no weights" in body, body[:500]
        assert "models" in _get_json(f"{base}/info/"), "the server keeps answering"


def test_weights_of_your_own_are_served_with_their_class_count_and_names(
    phantom_studies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``make label-serve DATA=...``: a model of five structures (L1-L5; untrained, since serving is what is
    tested) through a copy of the bundle that holds its weights, class count and names."""
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    for net_id, name in (("coarse_network_def", "coarse.pt"), ("network_def", "model.pt"),
                         ("refine_network_def", "refine.pt")):
        torch.save(build_network(net_id=net_id, num_classes=6).state_dict(), tmp_path / "models" / name)
    sizes = {"level_sizes": [0.9, 0.95, 1.0, 1.05, 1.1], "labels": 20}  # stage 3's, as training writes them
    (tmp_path / "models" / "refine_sizes.json").write_text(json.dumps(sizes))
    dataset = tmp_path / "dataset.json"
    labels = {"0": "background", **{str(k): f"L{k}" for k in range(1, 6)}}
    dataset.write_text(json.dumps({"labels": {**labels, "6": "S"}}))
    with pytest.raises(ValueError, match="dataset.json names 7 classes .* but .*model.pt predicts 6"):
        write_label_bundle(tmp_path / "models", dataset, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    dataset.write_text(json.dumps({"labels": labels}))
    bundle = write_label_bundle(tmp_path / "models", dataset, tmp_path / "copy")
    assert json.loads((bundle / "models" / "refine_sizes.json").read_text()) == sizes, "served with its level sizes"
    with serve(prepare_app(tmp_path / "apps", bundle), phantom_studies, tmp_path / "server.log") as base:
        assert _get_json(f"{base}/info/")["models"][MODEL_NAME]["labels"] == {f"l{k}": k for k in range(1, 6)}
        served = tmp_path / "served.nii.gz"
        served.write_bytes(_post_infer(f"{base}/infer/{MODEL_NAME}?image=phantom&output=image"))
    mask = np.asarray(nib.load(served).dataobj)
    assert mask.shape == SHAPE and set(np.unique(mask).tolist()) <= set(range(6)) and len(np.unique(mask)) > 1
    np.testing.assert_array_equal(mask, bundle_run_prediction(bundle, phantom_studies, tmp_path / "run"))
    with pytest.raises(SystemExit):
        label_main(["--studies", str(phantom_studies), "--models", str(tmp_path / "models")])
    assert "--models and --dataset-json go together" in capsys.readouterr().err
