"""Park et al., "Relational Knowledge Distillation" (CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.base import ModelOutput
from ntdh_bench.distillers.base import (
    Distiller,
    keep_weighted,
    pooled_embedding,
    sample_weight,
)
from ntdh_bench.distillers.registry import register_distiller
from ntdh_bench.distillers.rkd_angles import angle_loss


@register_distiller("rkd")
class RKD(Distiller):
    """``L = distance_weight * L_D + angle_weight * L_A`` on the penultimate embeddings.

    Distance-wise term: with ``d_ij = ||e_i - e_j||`` and ``mu`` the mean of the
    non-zero distances of the batch, ``L_D = mean_ij huber(d_s,ij / mu_s, d_t,ij / mu_t)`` over
    all ``B^2`` pairs. Angle-wise term: with ``a_ijk = <u_ij, u_kj>`` the cosine of
    the angle at ``e_j`` (``u_ij = (e_i - e_j) / ||e_i - e_j||``, 0 for equal points),
    ``L_A = mean_ijk huber(a_s,ijk, a_t,ijk)`` over all ``B^3`` triplets. ``huber`` is
    PyTorch's ``smooth_l1_loss`` (beta 1), averaged as above. Both terms are invariant to a
    rescaling of either embedding. Defaults (25 and 50) are the reference settings. The angle
    term is computed from the Gram matrix, block by block (:mod:`.rkd_angles`): the same
    values without the ``B^3 D`` product.

    Embeddings are ``ModelOutput.embedding`` (pooled on dense tasks). With ``distill_weight``
    the relations are computed among the samples whose weight is positive (a masked sample is
    no one's neighbour); fractional weights only select. Fewer than two such samples give 0.
    """

    supported_tasks = ("classification", "dense")

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        task: str = "classification",
    ) -> None:
        super().__init__(task)
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        e_s, e_t = keep_weighted(
            sample_weight(batch),
            pooled_embedding(student, "rkd").flatten(1),
            pooled_embedding(teacher, "rkd").flatten(1),
        )
        if len(e_s) < 2:
            zero = e_s.sum() * 0.0
            return {"rkd_distance": zero, "rkd_angle": zero}
        distance = F.smooth_l1_loss(_normalised_distances(e_s), _normalised_distances(e_t))
        angle = angle_loss(e_s, e_t)
        return {
            "rkd_distance": self.distance_weight * distance,
            "rkd_angle": self.angle_weight * angle,
        }


def _normalised_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """``(B, B)`` Euclidean distances divided by the mean non-zero distance; 0 on the diagonal."""
    squared = e.pow(2).sum(dim=1)
    d2 = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2.0 * e @ e.T).clamp_min(eps)
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    d = d2.sqrt() * off_diagonal
    positive = d > 0
    mean = d.sum() / positive.sum().clamp_min(1)
    return d / mean.clamp_min(eps)
