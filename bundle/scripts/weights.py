"""Network weights on disk: read a bare ``state_dict`` or a training checkpoint, write either atomically, and
average the weights of one run's checkpoints (e.g. its best-validation and last epochs).

``train.json``'s ``finalize`` writes the mean of stage 2's best-validation and last-epoch weights to
``models/model.pt``: in three runs of the recipe it scored higher than the best weights alone (see
bundle/docs, "Training record"); stage 1's best weights it writes as they are (the mean of one).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel


def bare_network(obj: Any) -> Any:
    """``obj``'s wrapped module if it is a ``DataParallel`` / ``DistributedDataParallel`` wrapper, else ``obj``."""
    return obj.module if isinstance(obj, (DataParallel, DistributedDataParallel)) else obj


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network's ``state_dict`` from ``path``: a bare one (the best-validation file) or the ``model`` entry
    of a training checkpoint (model, optimiser, scheduler, trainer)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path}: not a network state_dict nor a checkpoint with a 'model' entry")
    return ckpt


def load_network(network: torch.nn.Module, path: str | os.PathLike, stage: str,
                 device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load the weights of ``path`` (see :func:`load_weights`) into ``network``, move it to ``device`` and set it
    to eval mode; a missing or unloadable file raises an error naming it and the ``stage`` it belongs to."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no {stage} weights; train them with `make train`, or, run from outside the repository root "
            "or the bundle folder, pass --bundle_root"
        )
    try:
        network.load_state_dict(load_weights(path))
    except Exception as err:  # noqa: BLE001 - torch.load / load_state_dict raise many types
        raise RuntimeError(f"{path}: cannot load the {stage} weights ({err})") from err
    return network.to(device).eval()


def write_atomic(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary file beside it, renamed over ``path`` when complete."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_atomic(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`write_atomic`). The same object gives the same
    bytes: ``torch.save`` names its archive after the file it writes, so it saves to memory first."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(path, buffer.getvalue())


def save_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> str:
    """Write the network weights ``state`` to ``path`` as a bare ``state_dict``, atomically."""
    return save_atomic(dict(state), path)


def average_weights(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the floating-point tensors of ``states`` (weights, and BatchNorm statistics where
    a network has them); integer tensors (BatchNorm's ``num_batches_tracked``) are taken from the last state."""
    if not states:
        raise ValueError("no weights to average")
    last = states[-1]
    for i, state in enumerate(states):
        if state.keys() != last.keys():
            raise ValueError(f"weights {i} and {len(states) - 1} hold different tensors: "
                             f"{sorted(state.keys() ^ last.keys())[:5]}")
        shapes = [k for k in last if state[k].shape != last[k].shape]
        if shapes:
            raise ValueError(f"weights {i} and {len(states) - 1} differ in the shape of {shapes[:5]}")
    return {
        k: torch.stack([s[k] for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v.clone()
        for k, v in last.items()
    }


def average_checkpoints(paths: Sequence[str | os.PathLike], output: str | os.PathLike) -> str:
    """Write the mean of the weights in ``paths`` (see :func:`load_weights`) to ``output`` as a bare
    ``state_dict``, the format of the best-validation file."""
    return save_weights(average_weights([load_weights(p) for p in paths]), output)
