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
across processes like any torchmetrics object.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from datamodules.base import IGNORE_INDEX


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
