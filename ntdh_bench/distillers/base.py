"""The Distiller contract shared by every KD method, and the helpers they share.

A distiller is an ``nn.Module`` called as ``distiller(student_out, teacher_out, batch)`` that
returns a dict of named, already weighted loss terms; :class:`ntdh_bench.module.CrossModalKD`
sums them. A distiller may own parameters (regressors, embedding heads, memory banks); the
LightningModule optimises them with the student and saves them in its checkpoints.

Per-sample weights: when the batch carries ``distill_weight`` (``(B,)``, or ``(B, *S)`` like the
labels for dense tasks: ``(B, H, W)`` pixels, ``(B, D, H, W)`` voxels), logit distillers weight
each sample (pixel, voxel) by it and divide by the total weight.
Distillers that compare whole samples read :func:`sample_weight` (a dense sample weighs the mean
of its pixels' weights); relational ones (RKD, SP, PKT) keep the samples whose weight is
positive (:func:`keep_weighted`). The sample masks of Algorithm 2 set it; the cross-entropy term
never sees it.

Binding: adapters whose shapes depend on the networks or the data (FitNet's regressor, CRD's
heads and memory bank) are created in :meth:`Distiller.bind`, which
:class:`ntdh_bench.module.CrossModalKD` calls from its ``setup`` hook, before Lightning runs
``configure_optimizers``, so that the optimizer sees them. Schedules (DKD's warm-up, FitNet's
two stages) read ``self.epoch``, which the module sets through :meth:`Distiller.set_epoch` at
the start of every training epoch.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from torch import Tensor, nn

from datamodules.base import IGNORE_INDEX
from models.base import ModelOutput
from ntdh_bench.divergence import dense_keep_mask, flatten_dense

TASKS = ("classification", "dense")


class Distiller(nn.Module):
    """Base class: holds the task and documents the call signature."""

    name: ClassVar[str] = ""
    supported_tasks: ClassVar[tuple[str, ...]] = ("classification",)

    def __init__(self, task: str = "classification") -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task not in self.supported_tasks:
            raise ValueError(
                f"distiller {self.name!r} does not apply to {task!r} tasks; it supports "
                f"{list(self.supported_tasks)}"
            )
        self.task = task
        self.epoch = 0

    def bind(
        self,
        student: ModelOutput,
        teacher: ModelOutput,
        num_train_samples: int,
        train_labels: Tensor | None = None,
    ) -> None:
        """Create the adapters sized from the networks and the data; a no-op here.

        Args:
            student: the student's output on a few training samples.
            teacher: the teacher's output on the same samples.
            num_train_samples: the size of the training split (``index`` runs below it).
            train_labels: the training split's labels in ``index`` order, when the datamodule
                holds the split as tensors; otherwise ``None``.

        Binding is idempotent: a distiller that is already bound keeps its adapters (and their
        trained values), so the module may call it again before testing.
        """

    def set_epoch(self, epoch: int) -> None:
        """Set the current training epoch, counted from 0 as Lightning does."""
        self.epoch = epoch

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Constructor defaults, for listings and for recording in run configs."""
        params = inspect.signature(cls.__init__).parameters
        return {
            k: p.default
            for k, p in params.items()
            if k not in ("self", "task") and p.default is not inspect.Parameter.empty
        }

    def extra_repr(self) -> str:
        return f"task={self.task!r}"


def paired_logits(
    student: ModelOutput,
    teacher: ModelOutput,
    batch: dict[str, Tensor],
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Student and teacher logits as ``(N, C)`` rows with their targets and weights.

    Classification passes through; dense outputs ``(B, C, *S)`` (any number of spatial dims)
    are flattened over the pixels (voxels) that are ``valid`` and labelled. Returns
    ``(logits_s, logits_t, target, weight)`` where ``weight`` is the flattened
    ``distill_weight`` of the batch or ``None``.
    """
    y = batch["y"]
    weight = batch.get("distill_weight")
    if student.logits.dim() == 2:
        return student.logits, teacher.logits, y, weight
    if student.logits.shape != teacher.logits.shape:
        raise ValueError(
            f"dense student and teacher logits differ in shape: {tuple(student.logits.shape)} "
            f"and {tuple(teacher.logits.shape)}"
        )
    logits_s, target = flatten_dense(student.logits, y, batch.get("valid"), ignore_index)
    logits_t, _ = flatten_dense(teacher.logits, y, batch.get("valid"), ignore_index)
    if weight is not None:
        weight = weight[dense_keep_mask(y, batch.get("valid"), ignore_index)]
    return logits_s, logits_t, target, weight


def sample_weight(batch: dict[str, Tensor], ignore_index: int = IGNORE_INDEX) -> Tensor | None:
    """The batch's ``distill_weight`` as one weight per sample ``(B,)``, or ``None``.

    Dense tasks (any number of spatial dims): the mean of a sample's pixel (voxel) weights over
    its valid, labelled ones (0 for a sample without any), so that feature distillers working on
    pooled embeddings follow a pixel mask in proportion.
    """
    weight = batch.get("distill_weight")
    if weight is None or weight.dim() == 1:
        return weight
    keep = dense_keep_mask(batch["y"], batch.get("valid"), ignore_index).to(weight.dtype)
    total = (weight * keep).flatten(1).sum(dim=1)
    return total / keep.flatten(1).sum(dim=1).clamp_min(1)


def keep_weighted(weight: Tensor | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The rows of ``tensors`` whose per-sample ``weight`` is positive (all rows without one)."""
    if weight is None:
        return tensors
    keep = weight > 0
    return tuple(t[keep] for t in tensors)


def pooled_embedding(output: ModelOutput, who: str) -> Tensor:
    """The penultimate embedding as ``(B, D)``; spatial embeddings are averaged (dense tasks)."""
    if output.embedding is None:
        raise ValueError(
            f"distiller {who!r} needs ModelOutput.embedding (the penultimate vector); this "
            "network returns None: set it in the model's forward"
        )
    emb = output.embedding
    return emb.flatten(2).mean(dim=2) if emb.dim() > 2 else emb


def weighted_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of per-sample values, or ``sum(w * v) / sum(w)`` (0 when every weight is 0 and the
    values are finite)."""
    if values.numel() == 0:
        return values.sum()
    if weight is None:
        return values.mean()
    if weight.dtype != values.dtype:
        weight = weight.to(values.dtype)
    # With every weight 0 the numerator is a sum of zeros, so this is 0 (and so is each
    # value's gradient) without a torch.where: four fewer operations, forward and backward,
    # each masked training step.
    return (weight * values).sum() / weight.sum().clamp_min(1e-12)
