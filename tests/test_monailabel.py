"""Integration: the real MONAI Label server (``monaibundle`` sample app, offline) serves the bundle.

Needs ``.venv-label`` (``make label-install``; ``make test`` runs it). Without it the test fails, it is not
skipped. Starts the server on a free loopback port, sends one phantom to ``/infer/<model>``, checks the
returned mask against the bundle's own inference (``monai.bundle run`` in this environment), stops it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spine_seg.label_app import MODEL_NAME, label_python, prepare_app, start_server
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
    """``studies/phantom.nii.gz``: one 600 x 300 phantom radiograph."""
    studies = tmp_path_factory.mktemp("studies")
    image, _ = make_phantom(SHAPE, seed=3)
    write_nifti(studies / "phantom.nii.gz", image)
    return studies


@pytest.fixture(scope="module")
def label_server(phantom_studies: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a running MONAI Label server; the process group is always terminated afterwards."""
    label_python()  # a clear FileNotFoundError ("run `make label-install`") instead of a skip
    root = tmp_path_factory.mktemp("label")
    app = prepare_app(root / "apps")
    port = _free_port()
    log = root / "server.log"
    proc = start_server(app, phantom_studies, port, log=log)
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
def bundle_prediction(phantom_studies: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The bundle's own inference (``monai.bundle run`` with inference.json) on the same phantom."""
    root = tmp_path_factory.mktemp("bundle_run")
    (root / "data" / "imagesTs").mkdir(parents=True)
    (root / "data" / "imagesTs" / "phantom.nii.gz").write_bytes((phantom_studies / "phantom.nii.gz").read_bytes())
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundle/configs/inference.json",
           "--dataset_dir", str(root / "data"), "--output_dir", str(root / "pred")]
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
                                             tmp_path: Path) -> None:
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



def _infer_unknown_image(label_server: str) -> urllib.error.HTTPError:
    with pytest.raises(urllib.error.HTTPError) as err:
        _post_infer(f"{label_server}/infer/{MODEL_NAME}?image=no-such-radiograph&output=image")
    return err.value


def test_unknown_image_is_refused_and_the_server_keeps_serving(label_server: str) -> None:
    assert 400 <= _infer_unknown_image(label_server).code < 600
    assert len(_post_infer(f"{label_server}/infer/{MODEL_NAME}?image=phantom&output=image")) > 0


@pytest.mark.xfail(strict=True, reason="MONAI Label 0.8.5 answers an unknown image with a bare 500 "
                   "'Internal Server Error' that names neither the image nor the cause (issue #4 open)")
def test_unknown_image_error_names_the_image(label_server: str) -> None:
    body = _infer_unknown_image(label_server).read().decode(errors="replace")
    assert "no-such-radiograph" in body, body[:500]
