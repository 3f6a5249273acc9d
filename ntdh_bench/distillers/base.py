"""The Distiller contract shared by every KD method, and the helpers they share.

A distiller is an ``nn.Module`` called as ``distiller(student_out, teacher_out, batch)`` that
returns a dict of named, already weighted loss terms; :class:`ntdh_bench.module.CrossModalKD`
sums them. A distiller may own parameters (regressors, embedding heads, memory banks); the
LightningModule optimises them with the student and saves them in its checkpoints.

Per-sample weights: when the batch carries ``distill_weight`` (``(B,)``, or ``(B, H, W)`` for
dense tasks), logit distillers weight each sample (pixel) by it and divide by the total weight.
The sample masks of Algorithm 2 set it; the cross-entropy term never sees it.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from models.base import ModelOutput
from ntdh_bench.divergence import dense_keep_mask

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
    student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor], ignore_index: int = 255
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Student and teacher logits as ``(N, C)`` rows with their targets and weights.

    Classification passes through; dense outputs are flattened over the pixels that are
    ``valid`` and labelled. Returns ``(logits_s, logits_t, target, weight)`` where ``weight`` is
    the flattened ``distill_weight`` of the batch or ``None``.
    """
    y = batch["y"]
    weight = batch.get("distill_weight")
    if student.logits.dim() == 2:
        return student.logits, teacher.logits, y, weight
    keep = dense_keep_mask(y, batch.get("valid"), ignore_index)
    logits_s = student.logits.permute(0, 2, 3, 1)[keep]
    logits_t = teacher.logits.permute(0, 2, 3, 1)[keep]
    return logits_s, logits_t, y[keep], None if weight is None else weight[keep]


def weighted_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of per-sample values, or ``sum(w * v) / sum(w)`` (0 when every weight is 0)."""
    if values.numel() == 0:
        return values.sum()
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype)
    total = weight.sum()
    return torch.where(total > 0, (weight * values).sum() / total.clamp_min(1e-12), total * 0)
