"""Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer"
(ECCV 2018)."""

from __future__ import annotations

from torch import Tensor

from models.base import ModelOutput
from ntdh_bench.distillers.base import (
    Distiller,
    keep_weighted,
    pooled_embedding,
    sample_weight,
    weighted_mean,
)
from ntdh_bench.distillers.registry import register_distiller


@register_distiller("pkt")
class PKT(Distiller):
    """``L = weight * (1 / B^2) * sum_ij q_ij log((q_ij + eps) / (p_ij + eps))``.

    Cosine-kernel conditional probabilities over the batch: with ``c_ij`` the cosine
    similarity of embeddings ``i`` and ``j`` (each normalised as ``e / (||e|| + eps)``),
    ``K_ij = (c_ij + 1) / 2`` and ``p_ij = K_ij / sum_k K_ik``; ``q`` is the teacher's, ``p`` the
    student's. The KL of each row is divided by ``B`` and averaged over rows: the reference
    takes the mean over all ``B^2`` entries, and ``weight = 30000`` is tuned for that
    reduction. ``eps = 1e-7`` is the reference's smoothing, which keeps the loss finite when a
    kernel value is exactly 0 (opposite embeddings).

    Embeddings are ``ModelOutput.embedding`` (pooled on dense tasks). With ``distill_weight``
    the batch is restricted to the samples whose weight is positive (a masked sample is no
    one's neighbour) and the rows are averaged with their weights.
    """

    supported_tasks = ("classification", "dense")

    def __init__(
        self, weight: float = 30000.0, eps: float = 1e-7, task: str = "classification"
    ) -> None:
        super().__init__(task)
        if eps <= 0:
            raise ValueError(f"pkt: eps must be positive, got {eps}")
        self.weight = weight
        self.eps = eps

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        e_s = pooled_embedding(student, "pkt").flatten(1)
        e_t = pooled_embedding(teacher, "pkt").flatten(1)
        w = sample_weight(batch)
        if w is not None:
            e_s, e_t, w = keep_weighted(w, e_s, e_t, w)
        p = self._conditional(e_s)
        q = self._conditional(e_t)
        rows = (q * ((q + self.eps) / (p + self.eps)).log()).sum(dim=1) / max(len(q), 1)
        return {"pkt": self.weight * weighted_mean(rows, w)}

    def _conditional(self, e: Tensor) -> Tensor:
        """``(B, B)`` row-stochastic cosine-kernel probabilities."""
        e = e / (e.norm(dim=1, keepdim=True) + self.eps)
        kernel = (e @ e.T + 1.0) / 2.0
        return kernel / kernel.sum(dim=1, keepdim=True)
