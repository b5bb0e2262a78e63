"""Serve the bundle with MONAI Label's ``monaibundle`` sample app, fully offline, on the loopback interface.

MONAI Label lives in its own virtual environment (``make label-install`` -> ``.venv-label``, pinned in
``requirements-label.txt``) because its pins (numpy<2, pydicom<3, torch 2.14) clash with the project's.
This module only uses the standard library (and, for ``--models``, :mod:`spine_seg.label_bundle`, which reads
the weights with torch); the project's ``.venv`` runs it and it starts the server with the label
environment's interpreter:

* the sample app is copied out of the installed ``monailabel`` package (``monailabel apps --download``,
  no network), once, into ``<app_root>/monaibundle``;
* the bundle appears there as ``model/<MODEL_NAME>`` (a symlink to ``bundle/``);
* the server gets ``--conf zoo_source github --conf sam2 false``: the defaults reach the network (model
  zoo, SAM2 weights) and fail offline.

``python -m spine_seg.label_app --studies DIR`` prepares the app and runs the server in the foreground; with
``--models DIR --dataset-json FILE`` it serves weights of your own through a copy of the bundle
(:mod:`spine_seg.label_bundle`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MODEL_NAME", "label_python", "prepare_app", "server_command", "main"]

REPO_ROOT = Path(__file__).resolve().parents[1]
# Avoid "detection", "deepedit" and "classification" in the name: the sample app picks the task type from it.
MODEL_NAME = "spine_vertebrae_segmentation"
# `make LABEL_VENV=...` passes its choice on through SPINE_SEG_LABEL_VENV.
DEFAULT_LABEL_VENV = Path(os.environ.get("SPINE_SEG_LABEL_VENV") or REPO_ROOT / ".venv-label")
DEFAULT_APP_ROOT = REPO_ROOT / "out" / "label"


def label_python(venv: str | Path = DEFAULT_LABEL_VENV) -> Path:
    """The label environment's interpreter; a clear error when ``make label-install`` has not run."""
    # Absolute (the server runs in another cwd), but not resolved: the symlink is what selects the venv.
    python = Path(os.path.abspath(venv)) / "bin" / "python"
    if not python.is_file():
        raise FileNotFoundError(f"{python} not found: run `make label-install` first")
    return python


def prepare_app(
    app_root: str | Path = DEFAULT_APP_ROOT,
    bundle_dir: str | Path = REPO_ROOT / "bundle",
    venv: str | Path = DEFAULT_LABEL_VENV,
    require_weights: bool = True,
) -> Path:
    """Copy the ``monaibundle`` sample app to ``app_root/monaibundle`` (once) and link the bundle into it.

    Returns the app directory. A bundle without the three stages' weights (``models/coarse.pt``, ``models/model.pt``,
    ``models/refine.pt``) is refused with a FileNotFoundError naming the missing file unless ``require_weights`` is
    false: MONAI Label would start anyway and answer every request for the model with an obscure AttributeError.
    """
    if require_weights:
        for weights in ("coarse.pt", "model.pt", "refine.pt"):
            if not (Path(bundle_dir) / "models" / weights).is_file():
                raise FileNotFoundError(f"{Path(bundle_dir) / 'models' / weights}: no trained weights to serve; "
                                        "run `make train` or copy the bundle's weights there")
    app_root = Path(app_root).resolve()
    app = app_root / "monaibundle"
    if not (app / "main.py").is_file():
        app_root.mkdir(parents=True, exist_ok=True)
        cmd = [str(label_python(venv)), "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle",
               "--output", str(app_root)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=_label_env(venv))
        if not (app / "main.py").is_file():
            raise RuntimeError(f"`{' '.join(cmd)}` did not create {app / 'main.py'}")
    bundle_dir = Path(bundle_dir).resolve()
    if not (bundle_dir / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{bundle_dir} is not a bundle (no configs/inference.json)")
    link = app / "model" / MODEL_NAME
    link.parent.mkdir(exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() == bundle_dir:
            return app
        link.unlink()
    link.symlink_to(bundle_dir, target_is_directory=True)
    return app


def _label_env(venv: str | Path) -> dict[str, str]:
    """The environment for label-venv subprocesses: its ``bin`` first on PATH (MONAI Label calls ``python``),
    and the repository on PYTHONPATH for :mod:`spine_seg.label_asgi` (which imports nothing else of ours)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(os.path.abspath(venv)) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def server_command(app: str | Path, studies: str | Path, port: int, venv: str | Path = DEFAULT_LABEL_VENV,
                   host: str = "127.0.0.1") -> list[str]:
    """The ``start_server`` command line for ``app`` with the offline settings."""
    return [
        str(label_python(venv)), "-m", "monailabel.main", "start_server",
        "--app", str(app), "--studies", str(Path(studies).resolve()), "--host", host, "--port", str(port),
        "--conf", "models", MODEL_NAME, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
        "--uvicorn_app", "spine_seg.label_asgi:app",
    ]


def start_server(app: str | Path, studies: str | Path, port: int, venv: str | Path = DEFAULT_LABEL_VENV,
                 log: str | Path | None = None) -> subprocess.Popen[bytes]:
    """Start the server in its own process group (stop it with ``os.killpg``); output goes to ``log``."""
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(server_command(app, studies, port, venv), stdout=out, stderr=subprocess.STDOUT,
                            env=_label_env(venv), cwd=str(Path(app).parent), start_new_session=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spine_seg.label_app", description=__doc__.splitlines()[0])
    parser.add_argument("--studies", required=True, help="folder of NIfTI images (the MONAI Label datastore)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--app-root", default=str(DEFAULT_APP_ROOT), help="where the sample app is copied")
    parser.add_argument("--bundle", default=str(REPO_ROOT / "bundle"))
    parser.add_argument("--venv", default=str(DEFAULT_LABEL_VENV), help="the MONAI Label virtual environment")
    parser.add_argument("--models", help="serve the weights in this folder (coarse.pt, model.pt, refine.pt) instead "
                                         "of the bundle's: those of `make train DATA=...`")
    parser.add_argument("--dataset-json", help="with --models: the data set they were trained on (label names)")
    args = parser.parse_args(argv)
    if not Path(args.studies).is_dir():
        parser.error(f"--studies {args.studies}: not a directory")
    if bool(args.models) != bool(args.dataset_json):
        parser.error("--models and --dataset-json go together")
    try:
        bundle = args.bundle
        if args.models:
            from spine_seg.label_bundle import write_label_bundle

            bundle = write_label_bundle(args.models, args.dataset_json,
                                        Path(args.app_root) / "bundles" / Path(args.models).resolve().name, args.bundle)
        app = prepare_app(args.app_root, bundle, args.venv)
    except (OSError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    cmd = server_command(app, args.studies, args.port, args.venv)
    print(f"MONAI Label on http://127.0.0.1:{args.port} (model {MODEL_NAME}): {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, env=_label_env(args.venv), cwd=str(app.parent))


if __name__ == "__main__":
    sys.exit(main())
