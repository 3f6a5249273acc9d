"""Whole-epoch steps: a run on in-memory tensors trains a whole epoch inside one Lightning step.

Lightning's automatic optimisation costs about 1 ms per step on this suite's CPU machines
(the closure, the precision plugin, the strategy, a dozen hook dispatches over every
callback), more than a step of a 50-16-16-4 MLP. Where nothing needs Lightning between two
optimizer steps, the module switches to manual optimisation, its datamodule hands it the
epoch's batches as one item (:class:`datamodules.base.WholeEpochLoader`), and
:func:`train_batches` runs the plain ``loss.backward(); step(); zero_grad()`` loop over them:
the same batches in the same order, the same operations in the same order as Lightning's
automatic loop, so the same numbers. Epoch-level work (validation, logging, checkpoints,
guards) stays with Lightning.

Possible only where that loop *is* what Lightning would do (:func:`whole_epoch_obstacle`): one
process, full 32/64-bit precision, no gradient clipping or accumulation, no step limits, no
validation inside the epoch, and no callback acting between steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

from datamodules.base import WholeEpoch

# Callback hooks that run between two optimizer steps: a callback using any of them needs
# Lightning's per-step loop.
PER_STEP_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)
_FULL_PRECISIONS = ("32-true", "64-true", "32", "64")


def whole_epoch_obstacle(trainer: L.Trainer) -> str | None:
    """Why ``trainer`` needs its per-step loop (a sentence), or None if whole-epoch steps
    would compute exactly what it computes."""
    if trainer.world_size != 1:
        return f"{trainer.world_size} processes (gradients are synchronised per step)"
    if str(trainer.precision) not in _FULL_PRECISIONS:
        return f"precision {trainer.precision} (its plugin scales and casts per step)"
    if trainer.accumulate_grad_batches != 1:
        return f"accumulate_grad_batches={trainer.accumulate_grad_batches}"
    if trainer.gradient_clip_val:
        return f"gradient_clip_val={trainer.gradient_clip_val}"
    if trainer.max_steps != -1:
        return f"max_steps={trainer.max_steps}"
    limit, interval = trainer.limit_train_batches, trainer.val_check_interval
    if not (isinstance(limit, float) and limit == 1.0):
        return f"limit_train_batches={limit}"
    if not (isinstance(interval, float) and interval == 1.0):
        return f"val_check_interval={interval} (validation inside an epoch)"
    for callback in trainer.callbacks:
        for hook in PER_STEP_HOOKS:
            if is_overridden(hook, callback, parent=L.Callback):
                return f"callback {type(callback).__name__} acts between steps ({hook})"
    return None


def train_batches(
    module: L.LightningModule,
    batches: Iterable[Any],
    step_loss: Callable[[Any], Tensor],
) -> int:
    """Train ``module`` on ``batches`` with its (single) optimizer, one step per batch:
    ``step_loss(batch).backward(); step(); zero_grad()``, Lightning's automatic order.

    Counts the steps in Lightning's progress as its per-step loop would: ``global_step``
    (the guards' messages) and the loggers' step (TensorBoard's x axis, which Lightning
    advances by one after each of its training steps, here one per epoch). Returns the number
    of steps.
    """
    if module.trainer.lr_scheduler_configs:
        raise RuntimeError(
            f"{type(module).__name__} has learning-rate schedulers, which Lightning does not step "
            "under whole-epoch steps (manual optimisation); build the module with "
            "whole_epochs=False to keep Lightning's per-step loop"
        )
    optimizer = module.optimizers(use_pl_optimizer=False)
    epoch_loop = module.trainer.fit_loop.epoch_loop
    progress = epoch_loop.manual_optimization.optim_step_progress
    steps = 0
    for batch in batches:
        step_loss(batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        progress.increment_ready()
        progress.increment_completed()
        steps += 1
    if steps:  # Lightning adds the last one after this step
        epoch_loop._batches_that_stepped += steps - 1
    return steps


class WholeEpochSteps:
    """Mixin for a LightningModule: whole-epoch steps where possible.

    Set ``whole_epochs = False`` to keep Lightning's per-step loop. Call
    :meth:`choose_step_loop` from ``setup("fit")``, let the training loader be wrapped in a
    :class:`~datamodules.base.WholeEpochLoader` when ``whole_epoch_steps`` is set, and have
    ``training_step`` return :meth:`step_batches`.
    """

    whole_epochs: bool = True
    whole_epoch_steps: bool = False  # decided at setup("fit"); the training loader reads it

    def choose_step_loop(self, data_in_memory: bool) -> None:
        """Whole-epoch steps iff allowed, the data are in memory and nothing stands in the
        way (:func:`whole_epoch_obstacle`); manual optimisation follows the choice."""
        self.whole_epoch_steps = (
            self.whole_epochs and data_in_memory and whole_epoch_obstacle(self.trainer) is None
        )
        self.automatic_optimization = not self.whole_epoch_steps

    def keys_unread_in_training(self) -> frozenset[str]:
        """Batch keys this module's whole-epoch training never reads: the datamodule leaves
        them out of the training batches (each is a gather per step). Read when the training
        loader is built, after ``on_fit_start``; per-step callbacks, which could read any key,
        rule whole-epoch steps out (:func:`whole_epoch_obstacle`)."""
        return frozenset()

    def step_batches(self, batch: Any, batch_loss: Callable[[Any], Tensor]) -> Tensor | None:
        """Under automatic optimisation the batch's loss, for Lightning to optimise; else
        train on every batch of the epoch (or on this one batch) here and return None."""
        if self.automatic_optimization:
            return batch_loss(batch)
        train_batches(self, batch if isinstance(batch, WholeEpoch) else (batch,), batch_loss)
        return None
