"""The run's resumable checkpoint: one file, written atomically, also across resumed runs.

MONAI's ``CheckpointSaver`` (ignite's ``Checkpoint``, ``n_saved=1``) deletes the previous checkpoint *before*
writing the next one, in place, so a run stopped during that write is left with a partial file and nothing to
resume from; and it forgets its files when training is started again, so every resume leaves the previous
epoch's checkpoint behind. :class:`LatestCheckpointSaver` writes the new file first, through a temporary file,
and then deletes the run's other checkpoints, whichever run wrote them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events

from .weights import bare_network, save_atomic

PREFIX = "checkpoint_epoch="
CHECKPOINT = re.compile(rf"{re.escape(PREFIX)}(\d+)\.pt")
# write_atomic's temporary file for a checkpoint, left behind where the process was killed while writing
TEMPORARY = re.compile(rf"\.{re.escape(PREFIX)}\d+\.pt\.[^/]+\.tmp")


def latest_checkpoint(run_dir: str) -> str:
    """The path of ``run_dir``'s ``checkpoint_epoch=N.pt`` of the highest N, ``""`` if it has none (or no
    ``run_dir``)."""
    if not os.path.isdir(run_dir):
        return ""
    found = [(int(m[1]), name) for name in os.listdir(run_dir) if (m := CHECKPOINT.fullmatch(name))]
    return os.path.join(run_dir, max(found)[1]) if found else ""


class LatestCheckpointSaver:
    """A trainer handler: every ``interval`` epochs, write ``{name: obj.state_dict()}`` for ``save_dict`` to
    ``save_dir/checkpoint_epoch=N.pt`` (N: the epoch) atomically, then delete the folder's other
    ``checkpoint_epoch=*.pt`` and the temporary files of killed writes. ``train.json``'s ``resume_ckpt`` resumes
    from :func:`latest_checkpoint`.

    Args:
        save_dir: the run folder.
        save_dict: what to save, e.g. ``{"model": network, "optimizer": ..., "lr_scheduler": ...,
            "trainer": trainer}``; a ``DataParallel`` / ``DistributedDataParallel`` model is unwrapped.
        interval: save every this many epochs.
    """

    def __init__(self, save_dir: str, save_dict: Mapping[str, Any], interval: int = 1) -> None:
        self.save_dir, self.save_dict, self.interval = save_dir, save_dict, interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def path(self, epoch: int) -> str:
        """Where the checkpoint of ``epoch`` goes."""
        return os.path.join(self.save_dir, f"{PREFIX}{epoch}.pt")

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        state = {k: bare_network(v).state_dict() for k, v in self.save_dict.items()}
        kept = os.path.basename(save_atomic(state, self.path(epoch)))
        for name in os.listdir(self.save_dir):
            if name != kept and (CHECKPOINT.fullmatch(name) or TEMPORARY.fullmatch(name)):
                os.remove(os.path.join(self.save_dir, name))
        engine.logger.info(f"Saved checkpoint at epoch: {epoch}")
