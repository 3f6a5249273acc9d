"""Resumable runs: epoch-boundary checkpoints written atomically, with the RNG states.

A run killed at any moment restarts from its last completed epoch and then computes what an
uninterrupted run would have: checkpoints are taken only at the end of a training epoch (after
its validation), the batch order of each epoch depends only on the seed and the epoch number,
and the checkpoint carries the Python, NumPy and torch RNG states, which Lightning's own
checkpoints do not. A checkpoint is written to a temporary file and renamed into place, so a
kill during the write leaves the previous checkpoint intact; an unreadable checkpoint is
discarded with a warning and the run starts over.

Taking a checkpoint costs a write, so for many tiny runs they are rate-limited: at most one
every ``interval_s`` seconds (0 = every epoch).
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.ckpt"


class EpochCheckpoint(L.Callback):
    """Save ``<dirpath>/last.ckpt`` at the end of training epochs, atomically."""

    def __init__(self, dirpath: str | Path, interval_s: float = 60.0) -> None:
        self.dirpath = Path(dirpath)
        self.interval_s = interval_s
        self._last_save = time.monotonic()

    @property
    def path(self) -> Path:
        return self.dirpath / CHECKPOINT_NAME

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or time.monotonic() - self._last_save < self.interval_s:
            return
        if trainer.current_epoch + 1 >= (trainer.max_epochs or 0):
            return  # the run is about to finish; its record replaces the checkpoint
        # Not ntdh_core.io.atomic_write: saving is a collective call under DDP that every
        # rank makes with the same path, and only rank 0 writes, so only rank 0 renames.
        tmp = self.dirpath / f".{CHECKPOINT_NAME}.{os.getpid()}.tmp"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)  # collective under DDP; rank 0 writes
        if trainer.is_global_zero:
            tmp.replace(self.path)
        self._last_save = time.monotonic()

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["ntdh_rng"] = {
            "python": random.getstate(),
            "numpy": _numpy_state_to_safe(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get("ntdh_rng")
        if state is None:
            return
        random.setstate(state["python"])
        np.random.set_state(_numpy_state_from_safe(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_safe(state: tuple) -> tuple:
    """NumPy's RNG state with its key array as a tensor: loadable with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _numpy_state_from_safe(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


def resumable_checkpoint(dirpath: str | Path) -> Path | None:
    """The checkpoint to resume from, or ``None``; a corrupt one is removed with a warning."""
    path = Path(dirpath) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or otherwise unreadable: start over
        log.warning("checkpoint %s is unreadable (%s); the run starts over", path, exc)
        path.unlink(missing_ok=True)
        return None
    return path


def remove_checkpoint(dirpath: str | Path) -> None:
    """Delete a finished run's resume checkpoint (its record now holds the result)."""
    (Path(dirpath) / CHECKPOINT_NAME).unlink(missing_ok=True)
