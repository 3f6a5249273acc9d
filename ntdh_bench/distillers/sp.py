"""Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from models.base import ModelOutput
from ntdh_bench.distillers.base import Distiller, keep_weighted, sample_weight
from ntdh_bench.distillers.registry import register_distiller


@register_distiller("sp")
class SP(Distiller):
    """``L = weight * ||G~_t - G~_s||_F^2 / B^2`` on the last feature map.

    ``A`` is a model's last entry of ``ModelOutput.features`` flattened to ``(B, -1)``,
    ``G = A A^T`` its batch similarity matrix and ``G~`` the matrix with every row divided by
    its L2 norm. Reduction: the squared Frobenius norm divided by ``B^2``, as in the paper;
    ``weight = 3000`` is the reference setting.

    With ``distill_weight`` the similarities are computed among the samples whose weight is
    positive (``B`` counts those); fractional weights only select. Dense tasks use the same
    flattened per-sample maps.
    """

    supported_tasks = ("classification", "dense")

    def __init__(self, weight: float = 3000.0, task: str = "classification") -> None:
        super().__init__(task)
        self.weight = weight

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        if not student.features or not teacher.features:
            raise ValueError("sp needs ModelOutput.features from both networks; one has none")
        a_s, a_t = keep_weighted(
            sample_weight(batch), student.features[-1].flatten(1), teacher.features[-1].flatten(1)
        )
        g_s = F.normalize(a_s @ a_s.T, p=2, dim=1)
        g_t = F.normalize(a_t @ a_t.T, p=2, dim=1)
        b = max(len(a_s), 1)
        return {"sp": self.weight * (g_t - g_s).pow(2).sum() / b**2}
