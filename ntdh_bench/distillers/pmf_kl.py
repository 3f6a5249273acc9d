"""PMF's perception-aware loss (Zhuang et al., "Perception-aware multi-sensor fusion for 3D
LiDAR semantic segmentation", ICCV 2021; the paper's ref. [42], used for its Table IV).

PMF trains a camera stream and a lidar stream side by side; each stream learns from the other
only at the pixels where the other is the more confident one. As a one-way distillation from
the frozen teacher (the camera stream, by default) into the student (the point image), with
``p = softmax(z)`` per pixel ``n`` over ``C`` classes:

* confidence ``c(p) = 1 - H(p) / ln C`` (``H`` the entropy, so ``c`` is in ``[0, 1]``);
* perception weight ``w_n = [c_t > c_s] * (c_t - c_s) * [c_t >= tau]`` (``tau = 0.7`` as in
  PMF's SemanticKITTI config): the teacher guides a pixel only where it is confident, and more
  so the more it is above the student;
* ``L = weight * T^2 * sum_n d_n w_n KL(p_t^T || p_s^T) / sum_n d_n``, the KL summed over the
  classes at temperature ``T`` (PMF: ``T = 1``, no temperature), and ``d_n`` the batch's
  ``distill_weight`` (1 without a mask), so that Algorithm 2's sample mask drops pixels.

Dense tasks: the pixels are the valid, labelled ones (for SemanticKITTI: the projected points).
The confidences are always taken at ``T = 1``, as in PMF. In PMF's released trainer
(``tasks/pmf/trainer.py``) the weight is not detached, so its gradient also raises the
student's confidence where the teacher leads; ``detach_weight=True`` keeps the weight a
constant instead. Differences from PMF: the teacher is frozen and never learns from the
student (PMF's second, lidar-to-camera term is absent); the mean runs over the valid pixels
instead of PMF's mean over every pixel and class (a constant factor ``C * H * W / N`` apart),
and PMF's ``gamma = 0.5`` is the module's ``lam`` (Eq. 4) here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from models.base import ModelOutput
from ntdh_bench.distillers.base import Distiller, paired_logits, weighted_mean
from ntdh_bench.distillers.registry import register_distiller
from ntdh_bench.divergence import kl


def confidence(logits: Tensor) -> Tensor:
    """``1 - H(softmax(z)) / ln C`` per row of ``(N, C)`` logits (PMF's confidence)."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    return 1 - entropy / math.log(logits.shape[1])


def perception_weight(logits_t: Tensor, logits_s: Tensor, tau: float = 0.7) -> Tensor:
    """``[c_t > c_s] * (c_t - c_s) * [c_t >= tau]`` per row: where the teacher should guide."""
    c_t, c_s = confidence(logits_t), confidence(logits_s)
    gain = c_t - c_s
    return gain.clamp_min(0) * (c_t >= tau).to(gain.dtype)


@register_distiller("pmf_kl")
class PerceptionAwareKL(Distiller):
    """PMF's perception-aware KL (module doc): confidence-gated, confidence-gap-weighted KL."""

    supported_tasks = ("classification", "dense")

    def __init__(
        self,
        T: float = 1.0,
        tau: float = 0.7,
        weight: float = 1.0,
        detach_weight: bool = False,
        task: str = "classification",
    ) -> None:
        super().__init__(task)
        if T <= 0:
            raise ValueError(f"pmf_kl: temperature must be positive, got T = {T}")
        if not 0 <= tau <= 1:
            raise ValueError(f"pmf_kl: the confidence threshold tau must be in [0, 1], got {tau}")
        self.T = T
        self.tau = tau
        self.weight = weight
        self.detach_weight = detach_weight

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        logits_s, logits_t, _, d = paired_logits(student, teacher, batch)
        w = perception_weight(logits_t, logits_s, self.tau)
        if self.detach_weight:
            w = w.detach()
        per_pixel = w.to(logits_s.dtype) * kl(logits_t, logits_s, self.T)
        return {"pmf_kl": self.weight * self.T**2 * weighted_mean(per_pixel, d)}

    def extra_repr(self) -> str:
        return f"T={self.T}, tau={self.tau}, task={self.task!r}"
