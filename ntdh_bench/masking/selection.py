"""Which items a mask removes: ``floor(ratio * n)`` of them, chosen by score, at random, or
by a known truth (the oracle kinds, synthetic data only).

``true`` masks the items with the highest scores, ``false`` the lowest, ``random`` a seeded
random set of the same size. Ties in the score go to the earlier item. ``ratio * n`` is
rounded to 9 decimals before the floor, so that ``0.29 * 100`` masks 29, not 28.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK_KINDS = ("true", "false", "random")
ORACLE_KINDS = ("oracle_specific", "oracle_shared")


def mask_count(ratio: float, n: int) -> int:
    """Items masked out of ``n`` at ``ratio``: ``floor(ratio * n)``."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    return math.floor(round(ratio * n, 9))


def masked_indices(
    scores: Tensor | None,
    kind: str,
    ratio: float,
    n: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices (long) of the ``mask_count(ratio, n)`` items that ``kind`` masks.

    ``scores`` may be None for ``random`` (give ``n``); ``generator`` draws the random set
    and fixes the device. ``true`` / ``false`` rank by a stable sort, so that ties go to the
    earlier item (``topk`` leaves the order of ties unspecified).
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")
    if scores is None and kind != "random":
        raise ValueError(f"a {kind!r} mask needs scores")
    if n is None:
        if scores is None:
            raise ValueError("give n or scores")
        n = scores.numel()
    device = scores.device if scores is not None else torch.device("cpu")
    if generator is not None:
        device = generator.device
    k = mask_count(ratio, n)
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if kind == "random":
        order = torch.randperm(n, generator=generator, device=device)
    else:
        flat = scores.detach() if scores.requires_grad else scores
        flat = flat if flat.dim() == 1 else flat.flatten()
        order = torch.argsort(flat, descending=kind == "true", stable=True)
        if order.device != device:
            order = order.to(device)
    return order[:k]


def select_masked(
    scores: Tensor | None,
    kind: str,
    ratio: float,
    n: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boolean ``(n,)``: True for the ``mask_count(ratio, n)`` items that ``kind`` masks.

    ``scores`` may be None for ``random`` (give ``n``); ``generator`` draws the random set.
    """
    index = masked_indices(scores, kind, ratio, n, generator)
    n = scores.numel() if n is None else n
    masked = torch.zeros(n, dtype=torch.bool, device=index.device)
    masked[index] = True
    return masked
