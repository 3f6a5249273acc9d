"""Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ModelOutput
from ntdh_bench.distillers.base import (
    Distiller,
    paired_logits,
    sample_weight,
    weighted_mean,
)
from ntdh_bench.distillers.registry import register_distiller
from ntdh_bench.divergence import kl

# The 1x1 regressor and the pooling for hint maps, by number of spatial dims.
_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOLS = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


@register_distiller("fitnet")
class FitNet(Distiller):
    """``L = weight * mean_n mean_j (r(h_s)_nj - h_t,nj)^2``: the hint loss of FitNets (Eq. 3).

    The paper writes ``1/2 ||h_t - r(h_s)||^2``; the reference implementations (and this one)
    take the mean squared error instead, which ``weight`` is tuned for.

    ``h_s`` and ``h_t`` are the student's and teacher's ``features[hint_layer]`` (default: the
    middle one, ``len(features) // 2``) and ``r`` a trainable regressor created at binding: a
    linear layer for vector hints ``(B, D)``, a 1x1 convolution for maps ``(B, C, *S)`` with one
    to three spatial dims (images ``(H, W)``, volumes ``(D, H, W)``; the student's map is first
    average-pooled to the teacher's spatial size when they differ).
    Reduction: the squared error is averaged over a sample's hint elements, then over samples
    (PyTorch's ``mse_loss``), a weighted mean with ``distill_weight`` (dense: per sample, see
    :func:`sample_weight`). ``weight = 100`` is the reference implementations' setting.

    Schedule: ``hint_epochs = 0`` (default) is the single-stage variant of the reference
    benchmarks: the hint term is added in every epoch. ``hint_epochs = n > 0`` is the paper's
    two-stage schedule: in epochs ``0 .. n-1`` the distiller returns the hint term alone
    (stage 1, "hint-based training"); from epoch ``n`` it drops the hint and the regressor and
    returns Hinton's KD at temperature ``T``, ``T^2 * mean_n KL(p_t || p_s)`` (stage 2). The
    module's cross-entropy term stays on in both stages (``lam`` mixes it in); the paper's stage
    1 has no label term. Under DDP the idle regressor of stage 2 needs the
    ``ddp_find_unused_parameters_true`` strategy.
    """

    supported_tasks = ("classification", "dense")

    def __init__(
        self,
        weight: float = 100.0,
        hint_layer: int | None = None,
        hint_epochs: int = 0,
        T: float = 4.0,
        task: str = "classification",
    ) -> None:
        super().__init__(task)
        if hint_epochs < 0:
            raise ValueError(f"fitnet: hint_epochs must be >= 0, got {hint_epochs}")
        if T <= 0:
            raise ValueError(f"fitnet: temperature must be positive, got T = {T}")
        self.weight = weight
        self.hint_layer = hint_layer
        self.hint_epochs = hint_epochs
        self.T = T
        self.regressor: nn.Module | None = None

    def _hints(self, student: ModelOutput, teacher: ModelOutput) -> tuple[Tensor, Tensor]:
        n_s, n_t = len(student.features), len(teacher.features)
        if n_s == 0 or n_s != n_t:
            raise ValueError(
                f"fitnet needs the same, non-zero number of features from student and teacher "
                f"(ModelOutput.features); got {n_s} and {n_t}"
            )
        layer = n_s // 2 if self.hint_layer is None else self.hint_layer
        if not -n_s <= layer < n_s:
            raise ValueError(f"fitnet: hint_layer {layer} is out of range for {n_s} features")
        return student.features[layer], teacher.features[layer]

    def bind(
        self,
        student: ModelOutput,
        teacher: ModelOutput,
        num_train_samples: int,
        train_labels: Tensor | None = None,
    ) -> None:
        """Create the regressor from the hint shapes (kept when already bound)."""
        if self.regressor is not None:
            return
        h_s, h_t = self._hints(student, teacher)
        if h_s.dim() == 2 and h_t.dim() == 2:
            self.regressor = nn.Linear(h_s.shape[1], h_t.shape[1])
        elif h_s.dim() == h_t.dim() and h_s.dim() - 2 in _CONVS:
            conv = _CONVS[h_s.dim() - 2]
            self.regressor = conv(h_s.shape[1], h_t.shape[1], kernel_size=1)
        else:
            raise ValueError(
                "fitnet: hints must both be vectors (B, D) or both maps (B, C, *S) with 1-3 "
                f"spatial dims; got {tuple(h_s.shape)} and {tuple(h_t.shape)}"
            )

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        if 0 < self.hint_epochs <= self.epoch:
            logits_s, logits_t, _, w = paired_logits(student, teacher, batch)
            return {"kd": self.T**2 * weighted_mean(kl(logits_t, logits_s, self.T), w)}
        if self.regressor is None:
            raise RuntimeError(
                "fitnet is not bound: CrossModalKD creates its regressor in setup() from the "
                "trainer's datamodule; pass datamodule= to Trainer.fit or call bind() first"
            )
        h_s, h_t = self._hints(student, teacher)
        if h_s.dim() > 2 and h_s.shape[2:] != h_t.shape[2:]:
            h_s = _POOLS[h_s.dim() - 2](h_s, h_t.shape[2:])
        error = (self.regressor(h_s) - h_t).pow(2).flatten(1).mean(dim=1)
        return {"hint": self.weight * weighted_mean(error, sample_weight(batch))}
