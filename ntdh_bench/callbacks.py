"""Lightning callbacks of the suite; each works with any ``Trainer`` around ``CrossModalKD``.

* :class:`FeatureMask`: Algorithm 1's mask on the teacher (input features or one hidden
  layer's channels), applied when the run is set up;
* :class:`SampleMask`: Algorithm 2, dropping samples from the distillation term per batch;
* :class:`DivergenceMonitor`: KL, TCKL, NCKL, TCJSD and NCJSD between teacher and student, per
  validation and test epoch, at a chosen temperature;
* :class:`MetricHistory`: the per-epoch curves of a run, kept for figures over training
  (Fig. 13) and returned with the run's metrics; :func:`curve` reads one back.

::

    trainer = L.Trainer(max_epochs=30, callbacks=[SampleMask("true", 0.25), DivergenceMonitor()])
    trainer.fit(CrossModalKD(student, teacher, build_distiller("kd"), num_classes=4), dm)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from ntdh_bench.distillers.base import paired_logits
from ntdh_bench.divergence import divergence_report
from ntdh_bench.epoch_metrics import log_epoch_values
from ntdh_bench.masking.feature_mask import MaskedNetwork, feature_keep_mask
from ntdh_bench.masking.saliency import Saliency
from ntdh_bench.masking.sample_mask import PSSM_THRESHOLD, SampleWeighting

DIVERGENCES = ("kl", "tckl", "nckl", "tcjsd", "ncjsd")
HISTORY_PREFIX = "history/"
DEFAULT_HISTORY = ("val/tcjsd", "val/ncjsd", "val/acc", "val/miou", "train/masked_fraction")


class FeatureMask(L.Callback):
    """Zero the teacher's masked input features (or ``layer``'s masked channels).

    ``keep`` is 1 for kept, 0 for masked entries, shaped like one input sample or
    ``(channels,)``. Applied in ``setup``, before the teacher's outputs are cached and before
    the distiller is bound; on a ``UnimodalModule`` it masks the network being trained (a
    teacher retrained on its masked input). Applying it again to the same module is a no-op.
    """

    def __init__(self, keep: Tensor, layer: str | None = None) -> None:
        self.keep = keep.detach().float().cpu()
        self.layer = layer
        self._applied: set[int] = set()

    @classmethod
    def from_saliency(
        cls,
        saliency: Saliency,
        kind: str,
        ratio: float,
        shape: Sequence[int],
        seed: int = 0,
    ) -> FeatureMask:
        """The mask of ``kind`` at ``ratio`` over the items ``saliency`` scored."""
        keep = feature_keep_mask(kind, ratio, shape, saliency, seed=seed)
        return cls(keep, saliency.layer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if id(pl_module) in self._applied:
            return
        attr = "teacher" if hasattr(pl_module, "teacher") else "model"
        net = getattr(pl_module, attr, None)
        if not isinstance(net, nn.Module):
            raise ValueError(f"FeatureMask: {type(pl_module).__name__} has no {attr} to mask")
        masked = MaskedNetwork(net, self.keep, self.layer)
        if attr == "teacher":
            masked.requires_grad_(False)
            masked.eval()
        setattr(pl_module, attr, masked)
        self._applied.add(id(pl_module))


class SampleMask(L.Callback):
    """Algorithm 2 on a ``CrossModalKD`` run (see :mod:`ntdh_bench.masking.sample_mask`)."""

    def __init__(
        self,
        kind: str = "true",
        ratio: float = 0.25,
        T: float = 1.0,
        seed: int = 0,
        threshold: float = PSSM_THRESHOLD,
    ) -> None:
        self.weighting = SampleWeighting(kind, ratio, T, seed, threshold)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        add = getattr(pl_module, "add_distill_weighting", None)
        if add is None:
            raise TypeError(
                f"SampleMask needs a CrossModalKD module, got {type(pl_module).__name__}"
            )
        add(self.weighting)


class EvaluationMonitor(L.Callback):
    """Base of the callbacks that score the ``{"student", "teacher"}`` outputs of the
    module's validation and test steps: ``_start`` an epoch, ``_update`` per batch, ``_log``
    at the epoch's end, for ``stage`` ``"val"`` or ``"test"``."""

    def _start(self, stage: str, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    def _update(self, stage: str, outputs: Any, batch: Mapping[str, Tensor]) -> None:
        raise NotImplementedError

    def _log(self, stage: str, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start("val", pl_module)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start("test", pl_module)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        self._update("val", outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._update("test", outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log("val", pl_module)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log("test", pl_module)


class DivergenceMonitor(EvaluationMonitor):
    """Log ``<stage>/{kl,tckl,nckl,tcjsd,ncjsd}`` between teacher and student at temperature
    ``T``: means over the valid items of each validation and test epoch (synced across
    processes). Reads the ``{"student", "teacher"}`` outputs of the module's evaluation steps.

    The means are kept as detached running sums and an item count (what a torchmetrics
    ``MeanMetric`` keeps, without its per-update bookkeeping, which costs more than the
    divergences of a small batch); at the epoch's end they are summed across processes by the
    trainer's strategy and logged.
    """

    def __init__(self, T: float = 1.0) -> None:
        if T <= 0:
            raise ValueError(f"DivergenceMonitor: T must be positive, got {T}")
        self.T = T
        self._sums: dict[str, Tensor | None] = {"val": None, "test": None}
        self._counts: dict[str, int] = {"val": 0, "test": 0}

    def _start(self, stage: str, pl_module: L.LightningModule) -> None:
        self._sums[stage], self._counts[stage] = None, 0

    def _update(self, stage: str, outputs: Any, batch: Mapping[str, Tensor]) -> None:
        if not isinstance(outputs, Mapping) or outputs.get("teacher") is None:
            return
        logits_s, logits_t, target, _ = paired_logits(
            outputs["student"], outputs["teacher"], dict(batch)
        )
        values = divergence_report(logits_t, logits_s, target, self.T)
        sums = torch.stack([values[name].detach().float().sum() for name in DIVERGENCES])
        previous = self._sums[stage]
        self._sums[stage] = sums if previous is None else previous + sums
        self._counts[stage] += len(target)

    def _log(self, stage: str, pl_module: L.LightningModule) -> None:
        sums = self._sums[stage]
        if sums is None:
            return
        count = torch.tensor(float(self._counts[stage]), device=sums.device)
        strategy = pl_module.trainer.strategy
        sums = strategy.reduce(sums, reduce_op="sum")
        count = strategy.reduce(count, reduce_op="sum")
        means = sums / count
        log_epoch_values(pl_module, {f"{stage}/{n}": means[i] for i, n in enumerate(DIVERGENCES)})
        self._sums[stage], self._counts[stage] = None, 0


class MetricHistory(L.Callback):
    """Record chosen epoch-level metrics after every validation epoch.

    ``val/*`` are read in ``on_validation_end`` (sanity checks skipped), ``train/*`` in
    ``on_train_epoch_end`` (after the epoch's validation). Saved in checkpoints, so a resumed
    run keeps the epochs before the interruption.
    """

    def __init__(self, names: Sequence[str] = DEFAULT_HISTORY) -> None:
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
