"""Lightning callbacks of the suite.

:class:`MetricHistory` keeps the per-epoch validation curves (TCJSD and NCJSD between teacher and
student, the task metric, the masked fraction) of a run, so that figures over training (the
paper's Fig. 13) can be drawn from the result store, which reports read instead of TensorBoard
files. The curves travel in the run's flat metrics dict as ``history/<name>/<epoch>`` entries
(:meth:`MetricHistory.as_metrics`), and :func:`curve` reads one back from a record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L

HISTORY_PREFIX = "history/"
DEFAULT_NAMES = ("val/tcjsd", "val/ncjsd", "val/acc", "val/miou", "train/masked_fraction")


class MetricHistory(L.Callback):
    """Record chosen epoch-level metrics after every validation epoch.

    Values are read from ``trainer.callback_metrics`` once they are final for the epoch:
    ``val/*`` in ``on_validation_end`` (sanity checks skipped), ``train/*`` in
    ``on_train_epoch_end`` (which Lightning calls after the epoch's validation). Metrics that a run
    does not log are simply absent. The history is saved in checkpoints, so a resumed run keeps
    the epochs before the interruption.
    """

    def __init__(self, names: Sequence[str] = DEFAULT_NAMES) -> None:
        self.names = tuple(names)
        self.history: dict[str, dict[int, float]] = {}

    def _record(self, trainer: L.Trainer, train: bool) -> None:
        for name in self.names:
            value = trainer.callback_metrics.get(name)
            if value is not None and name.startswith("train/") == train:
                self.history.setdefault(name, {})[trainer.current_epoch] = float(value)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, train=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, train=True)

    def as_metrics(self) -> dict[str, float]:
        """``{"history/<name>/<epoch>": value}``, flat, for a run's metrics."""
        return {
            f"{HISTORY_PREFIX}{name}/{epoch:04d}": value
            for name, epochs in self.history.items()
            for epoch, value in sorted(epochs.items())
        }

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: dict(v) for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {
            k: {int(e): float(v) for e, v in epochs.items()}
            for k, epochs in state_dict.get("history", {}).items()
        }


def curve(metrics: Mapping[str, Any], name: str) -> list[float]:
    """The per-epoch values of ``name`` (e.g. ``"val/ncjsd"``) from a run's metrics, in epoch
    order (NaN for an epoch that was not recorded)."""
    prefix = f"{HISTORY_PREFIX}{name}/"
    points = {int(k[len(prefix) :]): float(v) for k, v in metrics.items() if k.startswith(prefix)}
    if not points:
        return []
    return [points.get(epoch, math.nan) for epoch in range(max(points) + 1)]
