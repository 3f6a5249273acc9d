"""Semantic scene completion scores: scene-completion IoU and SSC mIoU (SSCNet's protocol).

Both are read from one confusion matrix over the evaluated voxels (``valid``, e.g.
:func:`datamodules.nyu_ssc.evaluated_voxels`; labels 255 are ignored), accumulated over the
whole split as SSCNet's evaluation does (the DDRNet / AICNet scripts average per frame instead,
which weighs small scenes more):

* **completion** treats the task as occupied (any class > 0) vs empty (class 0): IoU
  ``tp / (tp + fp + fn)`` of "occupied", with its precision and recall;
* **SSC mIoU** is the mean IoU of the semantic classes ``1 .. C-1`` (``empty`` excluded), over
  the classes that occur in the labels or predictions (a class absent from both has no IoU).

The confusion matrix is torchmetrics' ``MulticlassConfusionMatrix``, so the metric syncs
across processes like any torchmetrics object. :class:`SSCMonitor` reports both scores from a
run, for the student and the teacher (``<stage>/ssc_miou``, ``<stage>/sc_iou``,
``<stage>/teacher_ssc_miou`` ...); the runner adds it for datamodules whose ``extra_metrics``
name ``"ssc"`` (:mod:`ntdh_bench.extra_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from datamodules.base import IGNORE_INDEX
from ntdh_bench.callbacks import EvaluationMonitor

STAGES = ("val", "test")
NETWORKS = ("student", "teacher")
# what is logged, as <stage>/<prefix><name>: the SSC literature's completion and semantic scores
LOGGED = {
    "sc_iou": "completion_iou",
    "sc_precision": "completion_precision",
    "sc_recall": "completion_recall",
    "ssc_miou": "ssc_miou",
}


class SSCMetrics(MulticlassConfusionMatrix):
    """``update(logits or labels, target, valid)``; ``compute()`` gives the scores as a dict:
    ``completion_iou``, ``completion_precision``, ``completion_recall``, ``ssc_miou`` and
    ``iou`` (per class, NaN where undefined). Class 0 is ``empty``."""

    def __init__(self, num_classes: int = 12, **kwargs: object) -> None:
        super().__init__(num_classes=num_classes, ignore_index=IGNORE_INDEX, **kwargs)

    def update(self, preds: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """``preds``: ``(B, C, *S)`` logits or ``(B, *S)`` labels; ``target``, ``valid``:
        ``(B, *S)``. Voxels outside ``valid`` are ignored."""
        if valid is not None:
            target = target.masked_fill(~valid.bool(), IGNORE_INDEX)
        super().update(preds, target)

    def compute(self) -> dict[str, Tensor]:
        return ssc_scores(self.confmat)


def ssc_scores(confmat: Tensor) -> dict[str, Tensor]:
    """The scores of a ``(C, C)`` confusion matrix (rows: labels, columns: predictions)."""
    cm = confmat.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    occupied_tp = cm[1:, 1:].sum()
    occupied_fp = cm[0, 1:].sum()
    occupied_fn = cm[1:, 0].sum()

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return num / den if den > 0 else torch.zeros((), dtype=cm.dtype, device=cm.device)

    semantic = iou[1:]
    present = ~semantic.isnan()
    return {
        "completion_iou": ratio(occupied_tp, occupied_tp + occupied_fp + occupied_fn),
        "completion_precision": ratio(occupied_tp, occupied_tp + occupied_fp),
        "completion_recall": ratio(occupied_tp, occupied_tp + occupied_fn),
        "ssc_miou": semantic[present].mean() if present.any() else semantic.new_zeros(()),
        "iou": iou,
    }


class SSCMonitor(EvaluationMonitor):
    """Log SSC scores per validation and test epoch: ``<stage>/{sc_iou, sc_precision,
    sc_recall, ssc_miou}`` of the student and ``<stage>/teacher_{...}`` of the teacher, over
    the batch's ``valid`` voxels, accumulated over the whole split (:class:`SSCMetrics`).

    Reads the ``{"student", "teacher"}`` outputs that ``CrossModalKD``'s evaluation steps
    return (as :class:`ntdh_bench.callbacks.DivergenceMonitor` does). At test time the
    student's per-class IoU is logged too, as ``test/ssc_iou_<class>`` (``class_names``, else
    the class index), leaving out classes absent from both labels and predictions.
    """

    def __init__(self, num_classes: int = 12, class_names: Sequence[str] | None = None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"SSCMonitor: {len(class_names)} class names for {num_classes} classes"
            )
        self.names = list(class_names or (str(k) for k in range(num_classes)))
        self.metrics = {s: {n: SSCMetrics(num_classes) for n in NETWORKS} for s in STAGES}

    def _start(self, stage: str, pl_module: L.LightningModule) -> None:
        for metric in self.metrics[stage].values():
            metric.to(pl_module.device)
            metric.reset()

    def _update(self, stage: str, outputs: Any, batch: Mapping[str, Tensor]) -> None:
        if not isinstance(outputs, Mapping):
            return
        for network, metric in self.metrics[stage].items():
            out = outputs.get(network)
            if out is not None:
                metric.update(out.logits.detach(), batch["y"], batch.get("valid"))

    def _log(self, stage: str, pl_module: L.LightningModule) -> None:
        for network, metric in self.metrics[stage].items():
            if not metric.update_count:
                continue
            scores = metric.compute()
            prefix = f"{stage}/" + ("" if network == "student" else "teacher_")
            for name, key in LOGGED.items():
                pl_module.log(prefix + name, scores[key].float(), on_epoch=True)
            if stage == "test" and network == "student":
                for name, iou in zip(self.names, scores["iou"].tolist(), strict=True):
                    if not math.isnan(iou):
                        pl_module.log(f"test/ssc_iou_{name}", iou, on_epoch=True)
