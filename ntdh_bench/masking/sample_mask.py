"""Algorithm 2: per-batch weights that drop samples from the distillation term only.

Each item of a training batch (a sample, or a valid labelled pixel / point of a dense batch) is
scored by its NCJSD between teacher and student at temperature ``T``, detached; ``true`` gives
weight 0 to the ``mask_count(ratio, n)`` items with the largest score, ``false`` to the
smallest, ``random`` to a seeded random set of that size. Kind ``pssm`` is the authors' released
weighting instead: ``omega = 1`` where the teacher is right, else ``(cos(z_t, z_s) + 1) / 2``
when that cosine of the logits is at least ``threshold`` (0.996), else 0. Cross-entropy always
sees every item: the weights reach the distiller as the batch's ``distill_weight``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from models.base import ModelOutput
from ntdh_bench.distillers.base import paired_logits
from ntdh_bench.divergence import dense_keep_mask, nontarget_jsd
from ntdh_bench.masking.selection import MASK_KINDS, mask_count, masked_indices

SAMPLE_MASK_KINDS = (*MASK_KINDS, "pssm")
PSSM_THRESHOLD = 0.996


def pssm_weights(
    logits_t: Tensor, logits_s: Tensor, target: Tensor, threshold: float = PSSM_THRESHOLD
) -> Tensor:
    """The released code's per-sample weight ``omega`` for ``(N, C)`` logits."""
    cos = F.cosine_similarity(logits_t.float(), logits_s.float(), dim=1)
    soft = torch.where(cos >= threshold, (cos + 1) / 2, 0.0)
    return torch.where(logits_t.argmax(dim=1) == target, 1.0, soft)


class SampleWeighting:
    """Algorithm 2's weights for one batch; :class:`ntdh_bench.callbacks.SampleMask` applies it."""

    def __init__(
        self,
        kind: str = "true",
        ratio: float = 0.25,
        T: float = 1.0,
        seed: int = 0,
        threshold: float = PSSM_THRESHOLD,
    ) -> None:
        if kind not in SAMPLE_MASK_KINDS:
            raise ValueError(f"sample mask kind must be one of {SAMPLE_MASK_KINDS}, got {kind!r}")
        mask_count(ratio, 1)
        if T <= 0:
            raise ValueError(f"sample mask temperature must be positive, got {T}")
        self.kind, self.ratio, self.T = kind, ratio, T
        self.seed, self.threshold = seed, threshold
        self._generator: torch.Generator | None = None

    def _gen(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def item_weights(self, logits_t: Tensor, logits_s: Tensor, target: Tensor) -> Tensor:
        """``(N,)`` weights for flattened ``(N, C)`` logits: 0 masked, 1 kept (or omega)."""
        return self._weights(logits_t, logits_s, target)[0]

    def _weights(
        self, logits_t: Tensor, logits_s: Tensor, target: Tensor
    ) -> tuple[Tensor, Tensor | float]:
        """:meth:`item_weights` and the share of items weighing 0: for the ranked and random
        kinds that is ``k / N``, known without reading the weights back."""
        # Every operation counts at this size (a batch of a small network): detach only what
        # needs it (the student), and skip conversions that would return their input.
        logits_t = logits_t.detach() if logits_t.requires_grad else logits_t
        logits_s = logits_s.detach() if logits_s.requires_grad else logits_s
        if self.kind == "pssm":
            weight = pssm_weights(logits_t, logits_s, target, self.threshold)
            n = weight.numel()
            return weight, (n - torch.count_nonzero(weight)) / n if n else 0.0
        n = len(target)
        scores = None
        if self.kind != "random":
            scores = nontarget_jsd(logits_t, logits_s, target, self.T)
        generator = self._gen(logits_t.device) if self.kind == "random" else None
        index = masked_indices(scores, self.kind, self.ratio, n, generator)
        weight = torch.ones(n, dtype=logits_t.dtype, device=logits_t.device)
        weight.index_fill_(
            0, index if index.device == weight.device else index.to(weight.device), 0.0
        )
        return weight, len(index) / n if n else 0.0

    def __call__(
        self, student: ModelOutput, teacher: ModelOutput, batch: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor | float]:
        """``(distill_weight, masked_fraction)`` for one training batch.

        ``distill_weight`` has the batch's layout: ``(B,)``, or ``(B, *spatial)`` with 0 outside
        the valid, labelled items; ``masked_fraction`` is the share of scored items weighing 0
        (a float for the ranked and random kinds, a 0-dim tensor for ``pssm``).
        """
        logits_s, logits_t, target, _ = paired_logits(student, teacher, batch)
        weight, fraction = self._weights(logits_t, logits_s, target)
        if student.logits.dim() == 2:
            return weight, fraction
        keep = dense_keep_mask(batch["y"], batch.get("valid"))
        full = torch.zeros(keep.shape, dtype=weight.dtype, device=weight.device)
        full[keep] = weight
        return full, fraction

    def __repr__(self) -> str:
        return (
            f"SampleWeighting(kind={self.kind!r}, ratio={self.ratio}, T={self.T}, seed={self.seed})"
        )
