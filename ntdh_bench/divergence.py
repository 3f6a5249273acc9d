"""Target / non-target decomposition of the divergence between two softmax outputs.

With ``p = softmax(z / T)`` and target class ``k`` (paper Sec. III-C, Eqs. 5-6, 17-20):

* the *target* distribution is the binary ``b = [p_k, 1 - p_k]``;
* the *non-target* distribution is ``p_hat_i = p_i / (1 - p_k)`` for ``i != k``, which is a
  softmax over the logits with the target removed.

``TCKL = KL(b_t || b_s)`` and ``NCKL = KL(p_hat_t || p_hat_s)`` satisfy the exact identity
(Eq. 17, read as in ``shared/DESIGN.md``)::

    KL(p_t || p_s) = TCKL + (1 - p_t,k) * NCKL

``TCJSD`` and ``NCJSD`` are the Jensen-Shannon divergences of the same pairs, in nats, so each
lies in ``[0, ln 2]``.

Everything is computed from log-softmax and masked log-sum-exp, never ``log(p + eps)``: the
functions stay finite, with finite gradients, for logits as large as 1e3 and for target
probabilities that round to exactly 0 or 1 in floating point. Inputs of half precision are
computed in float32. All functions return per-sample values of shape ``(N,)``; reductions are
the caller's. Dense outputs ``(B, C, *S)`` (any number of spatial dims: pixels ``(H, W)``,
voxels ``(D, H, W)``) are flattened to ``(N, C)`` by the caller, see :func:`flatten_dense`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from datamodules.base import IGNORE_INDEX

__all__ = [
    "decoupled_jsd",
    "decoupled_kl",
    "dense_keep_mask",
    "divergence_report",
    "flatten_dense",
    "jsd",
    "kl",
    "nontarget_jsd",
    "nontarget_mass",
]

_LN2 = math.log(2.0)


def _checked(logits: Tensor, T: float) -> Tensor:
    """``logits`` in at least float32, checking the shape and the temperature."""
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got C = {logits.shape[1]}")
    if T <= 0:
        raise ValueError(f"temperature must be positive, got T = {T}")
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _scaled(logits: Tensor, T: float) -> Tensor:
    """Return ``z / T`` in at least float32, checking the shape and the temperature."""
    return _checked(logits, T) / T


def _scaled_log_softmax(logits: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """Return ``(z / T, log_softmax(z / T))`` in at least float32.

    ``z - logsumexp(z)`` rather than ``torch.log_softmax``: the same stable value (to the last
    bit or so), about 3x faster forward and backward on CPU for the few classes of these
    tasks (torch's kernel is slow for a short last dimension); KD and the divergences call it
    every step.
    """
    z = _scaled(logits, T)
    return z, z - torch.logsumexp(z, dim=1, keepdim=True)


def _kl_from_logs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``sum_i p_i (log p_i - log q_i)`` along dim 1 for finite log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _jsd_from_logs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Jensen-Shannon divergence along dim 1; ``log m = logaddexp(log p, log q) - ln 2``.

    The expression is symmetric in ``p`` and ``q`` operation by operation, so swapping the
    arguments gives bit-identical results.
    """
    log_m = torch.logaddexp(log_p, log_q) - _LN2
    return 0.5 * (_kl_from_logs(log_p, log_m) + _kl_from_logs(log_q, log_m))


def _decompose(logits: Tensor, target: Tensor, T: float) -> tuple[Tensor, Tensor, Tensor]:
    """Split one model's output into target and non-target log-distributions.

    Returns ``(log_b, log_p_hat, nontarget_mask)``: ``log_b`` is ``(N, 2)`` with
    ``[log p_k, log(1 - p_k)]``; ``log_p_hat`` is ``(N, C)`` holding ``log p_hat_i`` at the
    non-target positions and 0 at the target position (a finite placeholder that the mask
    removes, so that neither ``-inf - -inf`` nor an overflowing ``exp`` ever appears, also in
    the backward pass); ``nontarget_mask`` is ``(N, C)``
    with 1 at the non-target positions.
    """
    return _decompose_with_log_p(logits, target, T)[1:]


def _decompose_with_log_p(
    logits: Tensor, target: Tensor, T: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_decompose` with the full ``log p`` first, for callers that need both."""
    z, log_p = _scaled_log_softmax(logits, T)
    target, log_z_non, log_p_hat, mask = _nontarget(z, target)
    log_z_all = torch.logsumexp(z, dim=1, keepdim=True)
    log_pk = log_p.gather(1, target)
    log_not_pk = log_z_non - log_z_all  # log(1 - p_k), exact even when p_k rounds to 1
    log_b = torch.cat([log_pk, log_not_pk], dim=1)
    return log_p, log_b, log_p_hat, mask


def _nontarget(z: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The non-target half of :func:`_decompose` for scaled logits ``z``: ``(target (N, 1),
    log_z_non, log_p_hat, nontarget_mask)``."""
    if target.shape != (z.shape[0],):
        raise ValueError(
            f"target must have shape ({z.shape[0]},) to match logits, got {tuple(target.shape)}"
        )
    target = target.long().unsqueeze(1)
    # a comparison, not scatter_: the same mask, and vmap (ensembles) has a rule for it
    is_target = torch.arange(z.shape[1], device=z.device) == target
    log_z_non = torch.logsumexp(z.masked_fill(is_target, float("-inf")), dim=1, keepdim=True)
    log_p_hat = (z - log_z_non).masked_fill(is_target, 0.0)
    return target, log_z_non, log_p_hat, (~is_target).to(z.dtype)


def _masked_kl(log_p: Tensor, log_q: Tensor, mask: Tensor) -> Tensor:
    return (mask * log_p.exp() * (log_p - log_q)).sum(dim=1)


def _masked_jsd(log_p: Tensor, log_q: Tensor, mask: Tensor) -> Tensor:
    log_m = torch.logaddexp(log_p, log_q) - _LN2
    return 0.5 * (_masked_kl(log_p, log_m, mask) + _masked_kl(log_q, log_m, mask))


def kl(logits_t: Tensor, logits_s: Tensor, T: float = 1.0) -> Tensor:
    """Per-sample ``KL(p_t || p_s)`` with ``p = softmax(logits / T)``; shape ``(N,)``."""
    _, log_pt = _scaled_log_softmax(logits_t, T)
    _, log_ps = _scaled_log_softmax(logits_s, T)
    return _kl_from_logs(log_pt, log_ps)


def jsd(logits_t: Tensor, logits_s: Tensor, T: float = 1.0) -> Tensor:
    """Per-sample Jensen-Shannon divergence of the full distributions, in nats."""
    _, log_pt = _scaled_log_softmax(logits_t, T)
    _, log_ps = _scaled_log_softmax(logits_s, T)
    return _jsd_from_logs(log_pt, log_ps)


def decoupled_kl(
    logits_t: Tensor, logits_s: Tensor, target: Tensor, T: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(TCKL, NCKL)`` (Eqs. 19-20), teacher first as in ``KL(p_t || p_s)``.

    ``TCKL = KL([p_t,k, 1 - p_t,k] || [p_s,k, 1 - p_s,k])`` and
    ``NCKL = sum_{i != k} p_hat_t,i log(p_hat_t,i / p_hat_s,i)``; for ``C = 2`` the
    non-target distribution has one class and NCKL is exactly 0.
    """
    log_bt, log_ht, mask = _decompose(logits_t, target, T)
    log_bs, log_hs, _ = _decompose(logits_s, target, T)
    return _kl_from_logs(log_bt, log_bs), _masked_kl(log_ht, log_hs, mask)


def decoupled_jsd(
    logits_t: Tensor, logits_s: Tensor, target: Tensor, T: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(TCJSD, NCJSD)`` (Eqs. 5-6), Jensen-Shannon in nats, each in ``[0, ln 2]``."""
    log_bt, log_ht, mask = _decompose(logits_t, target, T)
    log_bs, log_hs, _ = _decompose(logits_s, target, T)
    return _jsd_from_logs(log_bt, log_bs), _masked_jsd(log_ht, log_hs, mask)


def nontarget_jsd(logits_t: Tensor, logits_s: Tensor, target: Tensor, T: float = 1.0) -> Tensor:
    """Per-sample NCJSD alone: bit-identical to ``decoupled_jsd(...)[1]`` at a fraction of its
    cost (Algorithm 2 ranks a batch's samples by it every training step).

    Both sides go through each operation together, stacked as ``(2, N, C)``: every element is
    computed by the same operations, in the same order, as :func:`_nontarget` and
    :func:`_masked_jsd` do per side, so the bits are those of ``decoupled_jsd`` (tested); on
    small batches the cost is the number of operations, which this halves. The target entries
    are set by ``scatter`` rather than masked, and ``mask * exp(log_p_hat)`` is ``exp`` of the
    log-probabilities with the target still at ``-inf``: 1 * x is x, and ``exp(-inf)`` is the
    0 that the mask gave.
    """
    z_t, z_s = _checked(logits_t, T), _checked(logits_s, T)
    if z_t.dtype != z_s.dtype:  # each side in its own precision, as decoupled_jsd computes it
        _, _, log_ht, mask = _nontarget(z_t / T, target)
        _, _, log_hs, _ = _nontarget(z_s / T, target)
        return _masked_jsd(log_ht, log_hs, mask)
    n = z_t.shape[0]
    if target.shape != (n,) or z_s.shape != z_t.shape:
        raise ValueError(
            f"target {tuple(target.shape)} and student logits {tuple(z_s.shape)} must match "
            f"the teacher's logits {tuple(z_t.shape)}"
        )
    z = torch.stack((z_t, z_s))  # a new tensor: the in-place scatter below is safe
    if T != 1.0:  # z / 1 is z exactly
        z = z / T
    if target.dtype != torch.long:
        target = target.long()
    at_target = target.view(1, n, 1).expand(2, n, 1)
    z.scatter_(2, at_target, float("-inf"))
    log_p_hat = z - torch.logsumexp(z, dim=2, keepdim=True)
    p_hat = log_p_hat.exp()  # 0 at the target
    log_p_hat.scatter_(2, at_target, 0.0)  # a finite placeholder, as in _nontarget
    log_ht, log_hs = log_p_hat.unbind(0)
    log_m = torch.logaddexp(log_ht, log_hs) - _LN2
    kl_t, kl_s = (p_hat * (log_p_hat - log_m)).sum(dim=2).unbind(0)
    return 0.5 * (kl_t + kl_s)


def nontarget_mass(logits: Tensor, target: Tensor, T: float = 1.0) -> Tensor:
    """Per-sample ``1 - p_k``, the weight of NCKL in Eq. 17, computed without cancellation."""
    log_b, _, _ = _decompose(logits, target, T)
    return log_b[:, 1].exp()


def divergence_report(
    logits_t: Tensor, logits_s: Tensor, target: Tensor, T: float = 1.0
) -> dict[str, Tensor]:
    """All per-sample divergences the suite monitors: kl, tckl, nckl, tcjsd, ncjsd.

    Each side is decomposed once and shared by the five (the same operations as :func:`kl`,
    :func:`decoupled_kl` and :func:`decoupled_jsd` each doing its own, so the same bits, at
    about a third of the cost: every validation epoch computes it over the whole split).
    """
    log_pt, log_bt, log_ht, mask = _decompose_with_log_p(logits_t, target, T)
    log_ps, log_bs, log_hs, _ = _decompose_with_log_p(logits_s, target, T)
    return {
        "kl": _kl_from_logs(log_pt, log_ps),
        "tckl": _kl_from_logs(log_bt, log_bs),
        "nckl": _masked_kl(log_ht, log_hs, mask),
        "tcjsd": _jsd_from_logs(log_bt, log_bs),
        "ncjsd": _masked_jsd(log_ht, log_hs, mask),
    }


def dense_keep_mask(
    target: Tensor, valid: Tensor | None, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """``(B, *S)`` bool: the pixels (voxels) that are labelled and, when ``valid`` is given, valid.

    Works for any number of spatial dims ``S``; ``valid`` must have ``target``'s shape.
    """
    keep = target != ignore_index
    if valid is None:
        return keep
    if valid.shape != target.shape:
        raise ValueError(
            f"valid {tuple(valid.shape)} must have the labels' shape {tuple(target.shape)}"
        )
    return keep & valid.bool()


def flatten_dense(
    logits: Tensor, target: Tensor, valid: Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Flatten dense ``(B, C, *S)`` logits and ``(B, *S)`` labels to the kept pixels (voxels).

    ``S`` is any number of spatial dims (``(H, W)`` images, ``(D, H, W)`` volumes). A pixel is
    kept where ``valid`` is true (when given) and its label is not ``ignore_index``. Returns
    ``(logits[N, C], target[N])``, rows in the order of ``target``'s flattened layout.
    """
    if logits.dim() < 3 or target.dim() != logits.dim() - 1:
        raise ValueError(
            "dense outputs need logits (B, C, *S) and target (B, *S) with at least one spatial "
            f"dim, got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree on the "
            "batch or spatial sizes"
        )
    keep = dense_keep_mask(target, valid, ignore_index)
    return logits.movedim(1, -1)[keep], target[keep]
