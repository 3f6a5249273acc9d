"""Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022)."""

from __future__ import annotations

from torch import Tensor

from models.base import ModelOutput
from ntdh_bench.distillers.base import Distiller, paired_logits, weighted_mean
from ntdh_bench.distillers.registry import register_distiller
from ntdh_bench.divergence import decoupled_kl


@register_distiller("dkd")
class DKD(Distiller):
    """``L = w(e) * T^2 * mean_n (alpha * TCKD + beta * NCKD)`` with a linear warm-up ``w(e)``.

    ``TCKD = KL(b_t || b_s)`` compares the binary target / non-target split
    ``b = [p_k, 1 - p_k]`` and ``NCKD = KL(p_hat_t || p_hat_s)`` the distributions over the
    non-target classes, both at temperature ``T`` (the TCKL and NCKL of the NTDH paper,
    Eqs. 19-20, from :func:`ntdh_bench.divergence.decoupled_kl`, in log space). Unlike Eq. 17,
    NCKD is not scaled by ``1 - p_t,k``: decoupling that factor is DKD's point. For ``C = 2``
    there is one non-target class and NCKD is exactly 0.

    Reduction: summed over classes, averaged over samples (dense tasks: over valid, labelled
    pixels); with ``distill_weight`` a weighted mean. Defaults are the reference CIFAR-100
    settings (alpha 1, beta 8, T 4, warm-up 20 epochs).

    Warm-up: ``w(e) = min((e + 1) / warmup, 1)`` for the 0-based epoch ``e`` that
    :meth:`Distiller.set_epoch` receives, so the first epoch already distils with weight
    ``1 / warmup`` (the reference writes ``min(epoch / warmup, 1)`` with epochs counted from 1:
    the same schedule). ``warmup = 0`` switches the warm-up off.
    """

    supported_tasks = ("classification", "dense")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        T: float = 4.0,
        warmup: int = 20,
        task: str = "classification",
    ) -> None:
        super().__init__(task)
        if T <= 0:
            raise ValueError(f"dkd: temperature must be positive, got T = {T}")
        if warmup < 0:
            raise ValueError(f"dkd: warmup must be >= 0 epochs, got {warmup}")
        self.alpha = alpha
        self.beta = beta
        self.T = T
        self.warmup = warmup

    def warmup_factor(self) -> float:
        """``min((epoch + 1) / warmup, 1)``; 1 without warm-up."""
        return 1.0 if self.warmup == 0 else min((self.epoch + 1) / self.warmup, 1.0)

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        logits_s, logits_t, target, w = paired_logits(student, teacher, batch)
        tckd, nckd = decoupled_kl(logits_t, logits_s, target, self.T)
        scale = self.warmup_factor() * self.T**2
        return {
            "tckd": self.alpha * scale * weighted_mean(tckd, w),
            "nckd": self.beta * scale * weighted_mean(nckd, w),
        }
