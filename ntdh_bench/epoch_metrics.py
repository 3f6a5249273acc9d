"""Epoch-level values of a fit, logged without Lightning's per-call ``self.log`` bookkeeping.

``self.log`` costs about half a millisecond a call here: its result collection moves the
call's metadata to the value's device through a deep copy, every call. A released-protocol run
logs three training means in each of its 1000 epochs (a quarter of its time went there), a
quick synthetic run seven validation values in each of 30 epochs.

Values that are already epoch means and already whole (one process: nothing to reduce) need
none of that machinery. In a fit on one process they go straight into ``trainer.callback_metrics``
(what callbacks, guards and the metric history read) and to every logger, at the step and with
the ``epoch`` entry that Lightning's logger connector would give them, so TensorBoard receives
the same points. Everywhere else (several processes, where values are reduced across ranks;
the test stage, whose values are what ``trainer.test`` returns; a sanity check) ``self.log``
is used as before.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import lightning as L
import torch
from torch import Tensor
from torchmetrics import Metric


class EpochMeans:
    """Sample-weighted epoch means ``sum_b n_b v_b / sum_b n_b`` of training values.

    Each step's value is kept as it comes, detached (one operation a value and step, no
    device sync); the weighted sums are formed once, when :meth:`means` is read. Plain
    numbers (a float the step already knows) are summed as numbers.
    """

    #: values kept per name before they are folded into one partial sum (bounded memory)
    FOLD_AT = 4096

    def __init__(self) -> None:
        self._tensors: dict[str, list[Tensor]] = {}
        self._weights: dict[str, list[int]] = {}
        self._floats: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: Tensor | float, n: int) -> None:
        """Add ``value`` of a batch of ``n`` items to the mean of ``name``."""
        self._counts[name] = self._counts.get(name, 0) + n
        if not isinstance(value, Tensor):
            self._floats[name] = self._floats.get(name, 0.0) + value * n
            return
        tensors = self._tensors.setdefault(name, [])
        weights = self._weights.setdefault(name, [])
        tensors.append(value.detach())
        weights.append(n)
        if len(tensors) >= self.FOLD_AT:  # kept as one value: their mean, weighing their count
            count = sum(weights)
            tensors[:] = [self._weighted_sum(tensors, weights) / count]
            weights[:] = [count]

    @staticmethod
    def _weighted_sum(tensors: list[Tensor], weights: list[int]) -> Tensor:
        stacked = torch.stack(tensors)
        return stacked @ torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)

    def means(self, device: torch.device | str | None = None) -> dict[str, Tensor]:
        """Every name's mean so far, as a 0-dim tensor (on ``device`` for plain numbers)."""
        out: dict[str, Tensor] = {}
        for name, n in self._counts.items():
            tensors = self._tensors.get(name, [])
            if len(tensors) == 1 and name not in self._floats:
                out[name] = tensors[0]  # one batch (a full-batch epoch): its value is the mean
                continue
            total: Tensor | float = self._floats.get(name, 0.0)
            if tensors:
                total = self._weighted_sum(tensors, self._weights[name]) + total
            out[name] = torch.as_tensor(total / n, device=device)
        return out


def direct_logging(trainer: L.Trainer) -> bool:
    """Whether epoch values of this moment of ``trainer`` may bypass ``self.log``."""
    return (
        trainer.world_size == 1
        and trainer.state.fn == "fit"
        and not trainer.sanity_checking
        and (trainer.training or trainer.validating)
    )


def epoch_log_step(trainer: L.Trainer) -> int:
    """The logger step Lightning gives epoch values of a fit: the last stepped batch's index.

    Lightning advances its count of stepped batches after each training step's validation
    check, so it is one ahead once the epoch's training loop has finished.
    """
    stepped = trainer.fit_loop.epoch_loop._batches_that_stepped
    return stepped if trainer.validating else stepped - 1


def publish(trainer: L.Trainer, values: Mapping[str, Tensor]) -> None:
    """Make ``values`` visible to callbacks as ``trainer.callback_metrics``."""
    trainer.callback_metrics.update({name: value.detach() for name, value in values.items()})


# The (step, phase) at which each trainer's loggers last received ``epoch``: Lightning writes
# it once per group of values (the validation epoch's, the training epoch's), not per caller.
_EPOCH_WRITTEN: weakref.WeakKeyDictionary[L.Trainer, tuple[int, bool]] = weakref.WeakKeyDictionary()


def write_to_loggers(trainer: L.Trainer, values: Mapping[str, Tensor], step: int) -> None:
    """Write ``values`` to every logger of ``trainer`` at ``step``, with ``epoch`` once per
    step and phase (validation or training), as Lightning's logger connector does."""
    if not values or not trainer.loggers:
        return
    scalars = {name: float(value) for name, value in values.items()}
    group = (step, bool(trainer.validating))
    if _EPOCH_WRITTEN.get(trainer) != group:
        scalars.setdefault("epoch", trainer.current_epoch)
        _EPOCH_WRITTEN[trainer] = group
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=step)
        logger.save()


def log_epoch_values(
    module: L.LightningModule, values: Mapping[str, Tensor | Metric], sync_dist: bool = False
) -> None:
    """Log epoch-level ``values`` now (torchmetrics objects are computed and reset, as
    ``self.log`` of a metric does at the epoch's end): directly where :func:`direct_logging`
    allows, else through ``self.log`` (``sync_dist``: tensors averaged across processes)."""
    trainer = module.trainer
    if not direct_logging(trainer):
        for name, value in values.items():
            module.log(name, value, on_epoch=True, sync_dist=sync_dist)
        return
    computed = {}
    for name, value in values.items():
        if isinstance(value, Metric):
            computed[name] = torch.as_tensor(value.compute())
            value.reset()
        else:
            computed[name] = value
    publish(trainer, computed)
    write_to_loggers(trainer, computed, epoch_log_step(trainer))
