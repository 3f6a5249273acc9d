"""Hinton et al., "Distilling the knowledge in a neural network" (2015)."""

from __future__ import annotations

from torch import Tensor

from models.base import ModelOutput
from ntdh_bench.distillers.base import Distiller, paired_logits, weighted_mean
from ntdh_bench.distillers.registry import register_distiller
from ntdh_bench.divergence import kl


@register_distiller("kd")
class KD(Distiller):
    """``L = weight * T^2 * mean_n KL(softmax(z_t / T) || softmax(z_s / T))`` (paper Eq. 4).

    The KL is summed over classes and averaged over samples (PyTorch's ``batchmean``), and the
    ``T^2`` factor keeps gradient magnitudes comparable across temperatures, as in the
    reference implementations. Dense tasks: averaged over valid, labelled pixels.
    """

    supported_tasks = ("classification", "dense")

    def __init__(self, T: float = 4.0, weight: float = 1.0, task: str = "classification"):
        super().__init__(task)
        if T <= 0:
            raise ValueError(f"kd: temperature must be positive, got T = {T}")
        self.T = T
        self.weight = weight

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        logits_s, logits_t, _, w = paired_logits(student, teacher, batch)
        per_sample = kl(logits_t, logits_s, self.T)
        return {"kd": self.weight * self.T**2 * weighted_mean(per_sample, w)}
