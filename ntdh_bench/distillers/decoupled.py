"""The paper's weight adjustment method (Sec. IV-C, first part)."""

from __future__ import annotations

from torch import Tensor

from models.base import ModelOutput
from ntdh_bench.distillers.base import Distiller, paired_logits, weighted_mean
from ntdh_bench.distillers.registry import register_distiller
from ntdh_bench.divergence import decoupled_kl, nontarget_mass


@register_distiller("decoupled")
class Decoupled(Distiller):
    """``L = T^2 * mean_n (alpha * TCKL + beta * NCKL)`` with the split of Eqs. 17-20.

    ``alpha`` weighs the target-class part and ``beta`` the non-target part. With
    ``exact=True`` the non-target term is ``(1 - p_t,k) * NCKL`` as in Eq. 17, so that
    ``alpha = beta = 1`` is exactly Hinton's KD at the same temperature. The two terms are
    returned separately (``tckl``, ``nckl``) so that both are logged.
    """

    supported_tasks = ("classification", "dense")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        T: float = 4.0,
        exact: bool = False,
        task: str = "classification",
    ) -> None:
        super().__init__(task)
        if T <= 0:
            raise ValueError(f"decoupled: temperature must be positive, got T = {T}")
        self.alpha = alpha
        self.beta = beta
        self.T = T
        self.exact = exact

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        logits_s, logits_t, target, w = paired_logits(student, teacher, batch)
        tckl, nckl = decoupled_kl(logits_t, logits_s, target, self.T)
        if self.exact:
            nckl = nontarget_mass(logits_t, target, self.T) * nckl
        scale = self.T**2
        return {
            "tckl": self.alpha * scale * weighted_mean(tckl, w),
            "nckl": self.beta * scale * weighted_mean(nckl, w),
        }
