"""Keep a network's best-validation weights, also across a resumed run.

MONAI's ``CheckpointSaver(save_key_metric=True)`` forgets the best score when training is started again, so
the first validation after resuming replaces the best file even where it scores lower than an earlier epoch.
:class:`BestWeightsSaver` writes the score beside the run's checkpoints and compares with it on resuming.
"""

from __future__ import annotations

import json
import logging
import math
import os

import torch
from ignite.engine import Engine, Events

from .weights import bare_network, save_weights, write_atomic

logger = logging.getLogger(__name__)


class BestWeightsSaver:
    """An evaluator handler: after each validation whose key metric beats the best so far, write the network's
    bare ``state_dict`` to ``path`` and ``{"metric", "epoch", "path"}`` to ``state_file`` (JSON), both atomically.

    Args:
        network: the network validated (a ``DataParallel`` / ``DistributedDataParallel`` wrapper is unwrapped).
        path: where the best weights go.
        state_file: where the best score goes; keep it in the run folder, beside the training checkpoints.
        resume: whether the run resumes; then the score in ``state_file`` is the one to beat, otherwise it is
            ignored and overwritten.
        metric_name: the metric compared (higher is better, NaN never is); default: the evaluator's key metric.
    """

    def __init__(self, network: torch.nn.Module, path: str, state_file: str, resume: bool = False,
                 metric_name: str | None = None) -> None:
        self.network, self.path, self.state_file, self.metric_name = network, path, state_file, metric_name
        self.best: float | None = None
        if resume and os.path.isfile(state_file):
            with open(state_file) as f:
                self.best = float(json.load(f)["metric"])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or engine.state.key_metric_name
        value = float(engine.state.metrics[name])
        if math.isnan(value) or (self.best is not None and value <= self.best):
            return
        save_weights(bare_network(self.network).state_dict(), self.path)
        record = {"metric": value, "epoch": engine.state.epoch, "path": self.path}
        write_atomic(self.state_file, json.dumps(record, indent=1).encode())
        logger.info("best %s %.4f at epoch %d: weights saved to %s", name, value, engine.state.epoch, self.path)
        self.best = value
