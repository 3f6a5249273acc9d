"""Per-step timing shared by the step benchmarks (run as scripts from ``benchmarks/``)."""

from __future__ import annotations

import time

import lightning as L


class StepTimer(L.Callback):
    """Wall and CPU seconds of each training step after the first epoch."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch > 0:
            self.wall.append(time.perf_counter() - self._start[0])
            self.cpu.append(time.process_time() - self._start[1])


class EpochStepTimer(L.Callback):
    """Wall and CPU seconds per training step, as each epoch's time over its steps, after the
    first epoch. Only epoch hooks: the module keeps its whole-epoch steps
    (:mod:`ntdh_bench.whole_epochs`), which a per-batch hook would turn off, so this times
    steps as runs take them (with no validation: ``limit_val_batches=0``)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        steps = len(trainer.datamodule.train_dataloader().loader)
        if trainer.current_epoch > 0:
            self.wall.append((time.perf_counter() - self._start[0]) / steps)
            self.cpu.append((time.process_time() - self._start[1]) / steps)
