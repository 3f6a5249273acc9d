"""Guards that stop a run that is no longer training: non-finite metrics, divergence, and a
fit that ended before its last epoch.

A guard raises; the launcher (:func:`ntdh_bench.launchers.run_one`) records the run as
``failed`` with the guard's message, which names the metric, the epoch, the step and the
values, and the sweep goes on. Checks run once per epoch on the logged epoch means (no
per-step device synchronisation).

**Divergence.** A run has diverged when its training loss ``train/loss`` (``train/ce`` for a
network trained alone) rises above ``factor`` times its first-epoch value:
``L_e > factor * L_0``. ``factor`` is :data:`DEFAULT_DIVERGENCE_FACTOR` (10), or
``$NTDH_DIVERGENCE_FACTOR`` (``0`` or ``inf`` switches the check off). A loss that starts at
or below zero (possible for some distillation terms) is not judged by the ratio.
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L

DEFAULT_DIVERGENCE_FACTOR = 10.0
FACTOR_VARIABLE = "NTDH_DIVERGENCE_FACTOR"
LOSS_NAMES = ("train/loss", "train/ce")  # the first one logged is the run's training loss


class DivergedError(FloatingPointError):
    """A run whose loss rose above ``factor`` times its first-epoch value."""


class IncompleteRunError(RuntimeError):
    """A fit that ended before the epochs it was asked for."""


def divergence_factor() -> float:
    """``$NTDH_DIVERGENCE_FACTOR``, else :data:`DEFAULT_DIVERGENCE_FACTOR`."""
    text = os.environ.get(FACTOR_VARIABLE, "")
    if not text:
        return DEFAULT_DIVERGENCE_FACTOR
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"${FACTOR_VARIABLE}={text!r} is not a number (e.g. 10)") from None
    return math.inf if value <= 0 else value


def divergence_message(
    name: str, value: float, first: float, factor: float, where: str
) -> str | None:
    """The rule of the module doc: why ``value`` of loss ``name`` at ``where`` has diverged
    from its first-epoch value ``first``, or None if it has not."""
    if first > 0 and value > factor * first:
        return (
            f"diverged: {name} = {value:.6g} at {where}, above {factor:g} x its first-epoch "
            f"value {first:.6g}"
        )
    return None


def _location(trainer: L.Trainer) -> str:
    return f"epoch {trainer.current_epoch} (step {trainer.global_step})"


class FiniteLossGuard(L.Callback):
    """Stop a run any of whose logged metrics (training or validation) is no longer finite."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, value in trainer.callback_metrics.items():
            if not math.isfinite(float(value)):
                raise FloatingPointError(f"{name} is {float(value)} at {_location(trainer)}")


class DivergenceGuard(L.Callback):
    """Stop a run whose training loss exceeds ``factor`` times its first-epoch value (module
    doc); the first value is part of the checkpoint, so a resumed run is judged the same."""

    def __init__(self, factor: float | None = None) -> None:
        self.factor = divergence_factor() if factor is None else factor
        self.first: dict[str, float] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        name = next((n for n in LOSS_NAMES if n in metrics), None)
        if name is None or not math.isfinite(self.factor):
            return
        value = float(metrics[name])
        if name not in self.first:
            self.first[name] = value
            return
        message = divergence_message(name, value, self.first[name], self.factor, _location(trainer))
        if message is not None:
            raise DivergedError(f"{message} (${FACTOR_VARIABLE} sets the factor)")

    def state_dict(self) -> dict[str, Any]:
        return {"first": dict(self.first)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first = dict(state_dict.get("first", {}))


class CompletionGuard(L.Callback):
    """Fail a fit that returned before ``max_epochs`` (a callback stopped it, or it was cut
    short): such a run did not train what it was asked to."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wanted = trainer.max_epochs
        if wanted is not None and wanted > 0 and trainer.current_epoch < wanted:
            step_limit = (
                trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
            )
            if trainer.interrupted or step_limit or trainer.fast_dev_run:
                return  # an interrupt (Lightning handles it), or a step budget that was met
            raise IncompleteRunError(
                f"training stopped after {trainer.current_epoch} of {wanted} epoch(s) "
                f"(step {trainer.global_step}); the run is not done"
            )


def default_guards() -> list[L.Callback]:
    """The guards every Trainer of the suite gets (:func:`ntdh_bench.training.make_trainer`)."""
    return [FiniteLossGuard(), DivergenceGuard(), CompletionGuard()]
