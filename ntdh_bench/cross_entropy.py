"""Cross-entropy for wide batches of few classes, as ``F.cross_entropy`` computes it.

On the CPU, ATen's log-softmax over a short last dimension (the 4 to 10 classes of these tasks)
is not vectorised across rows: a full-batch epoch of the released protocol (6000 x 4 logits)
spends 0.6 to 0.7 ms in ``F.cross_entropy``'s forward and backward, an ensemble step of 30
members (7680 x 4) 0.75 to 0.9 ms, about as much as the small networks' own forward and
backward. Written as a handful of whole-tensor operations (the row maximum, ``exp``, the row
sum, ``log``, the target's logit) with the gradient ``softmax - onehot`` in one backward node,
the same loss takes 0.31 to 0.41 ms; for 6000 x 10 logits 0.36 to 0.42 against 1.55 to 1.66 ms.
On small batches the many operations cost more than ATen's one
kernel (256 x 4: 0.14 against 0.07 ms), so :func:`cross_entropy` takes this path only for
CPU batches of at least :data:`WIDE_LOGITS` logits of :data:`FEW_CLASSES` classes and calls
``F.cross_entropy`` otherwise.

The value is the same function (``logsumexp(z) - z[y]``, the row maximum subtracted first, as
in ``log_softmax``): it agrees with ``F.cross_entropy`` to float rounding, forward and backward,
with ``ignore_index`` labels contributing neither loss nor gradient (tested).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.base import IGNORE_INDEX

# Where this path is faster, measured (CPU, one thread, forward and backward): from about
# 10,000 logits (1024 x 10: 0.18 against 0.29 ms; 2048 x 4: 0.32 against 0.29 ms, even;
# 3000 x 4: 0.23 against 0.34 ms), for 3 to 15 classes; from 16 classes on ATen vectorises
# along the classes (6000 x 16: 0.26 against 0.50 ms for this path), and for 2 it is even.
WIDE_LOGITS = 10_000
FEW_CLASSES = range(3, 16)


class _PerRowCrossEntropy(torch.autograd.Function):
    """``(N,)`` cross-entropy of ``(N, C)`` logits; 0 (and no gradient) where ignored."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
        ignored = target == ignore_index
        safe = target.masked_fill(ignored, 0).unsqueeze(1)
        top = logits.amax(dim=1, keepdim=True)
        shifted = (logits - top).exp_()
        total = shifted.sum(dim=1, keepdim=True)
        per_row = total.log().add_(top).sub_(logits.gather(1, safe)).squeeze(1)
        ctx.save_for_backward(shifted, total, safe, ignored)
        return per_row.masked_fill_(ignored, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        shifted, total, safe, ignored = ctx.saved_tensors
        minus_one = torch.full(safe.shape, -1.0, dtype=shifted.dtype, device=shifted.device)
        softmax_minus_onehot = shifted.div(total).scatter_add_(1, safe, minus_one)
        return softmax_minus_onehot.mul_(grad.masked_fill(ignored, 0.0).unsqueeze(1)), None, None


def _wide(logits: Tensor) -> bool:
    return (
        logits.dim() == 2
        and logits.device.type == "cpu"
        and logits.dtype in (torch.float32, torch.float64)
        and logits.shape[1] in FEW_CLASSES
        and logits.numel() >= WIDE_LOGITS
    )


def per_sample_cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """``F.cross_entropy(logits, target, reduction="none", ignore_index=...)``, for ``(N, C)``
    logits (or any shape ``F.cross_entropy`` takes)."""
    if _wide(logits):
        return _PerRowCrossEntropy.apply(logits, target, ignore_index)
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``F.cross_entropy(logits, target, ignore_index=...)``: the mean over labelled items."""
    if not _wide(logits):
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    per_row = _PerRowCrossEntropy.apply(logits, target, ignore_index)
    return per_row.sum() / (target != ignore_index).sum()
