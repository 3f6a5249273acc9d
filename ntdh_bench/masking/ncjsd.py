"""The NCJSD of many teacher outputs against one fixed student output, for Algorithm 1.

Saliency scores millions of perturbed copies of ``f_a``'s logits against the same ``f_b``
outputs, so the student's side (its non-target distribution ``q``, ``log q``) is computed once
and the copies' side is written for speed on the CPU:

* classes lie along the first dim, ``(C, ..., N)``: every step is then an elementwise pass over
  long contiguous rows, and the reductions over classes add ``C`` rows (PyTorch's CPU kernels
  reduce and softmax over a handful of classes along the last dim an order of magnitude slower);
* the non-target logits are picked without a gather: slot ``j`` holds class ``j`` below the
  target and class ``j + 1`` from it on, an exact select between two shifted views;
* two transcendentals per element (the softmax's ``exp`` and ``log(p + q)``), where the
  log-space form ``logaddexp(log p, log q)`` costs three and PyTorch's CPU ``logaddexp``
  is not vectorised.

Per element, with ``p`` and ``q`` the two non-target distributions and ``m = (p + q) / 2``::

    NCJSD = 1/2 sum_j [p_j log(p_j / m_j) + q_j log(q_j / m_j)]
    log(p_j / m_j) = log(2 p_j) - log(p_j + q_j),  log(2 p_j) = z_j - max - log S + ln 2

``log(2 p_j)`` comes from the logits (exact log-softmax), never from ``log`` of a rounded
probability. The one ``log`` of a sum, ``log(p_j + q_j)``, is of a number in ``(0, 2]``;
it could be 0 only where both ``p_j`` and ``q_j`` underflow (logit gaps beyond about 87), and
only then (when some ``q_j`` is 0) is ``p + q`` floored at the smallest normal float: such
an entry adds under ``1e-36`` to the sum, where without the floor it would be ``0 * inf``.
Agreement with :func:`ntdh_bench.divergence.decoupled_jsd` is tested (to 1e-6 absolute on
ordinary logits, finite and close for logits of magnitude 1e3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LN2 = math.log(2.0)
_TINY = torch.finfo(torch.float32).tiny


class NontargetReference:
    """The student side of the NCJSD, computed once, for scoring many teacher outputs.

    ``ncjsd(logits)`` equals ``decoupled_jsd(logits, reference, target, T)[1]`` (tested) on
    ``(..., N, C)`` stacks; :meth:`ncjsd_classes_first` takes ``(C, ..., N)``, the layout the
    saliency engine produces, without a transposing copy.
    """

    def __init__(self, logits: Tensor, target: Tensor, T: float = 1.0) -> None:
        if logits.dim() != 2 or logits.shape[1] < 3:
            raise ValueError(
                "NCJSD needs logits (N, C) with C >= 3 (with two classes the non-target "
                f"distribution has one class and NCJSD is 0); got {tuple(logits.shape)}"
            )
        if T <= 0:
            raise ValueError(f"temperature must be positive, got T = {T}")
        n, c = logits.shape
        self.n, self.c, self.T = n, c, T
        slot = torch.arange(c - 1, device=logits.device).unsqueeze(1)
        shift = slot >= target.long().to(logits.device).unsqueeze(0)  # (C - 1, N)
        self.shift_bits = shift.to(torch.int32).neg_()  # all bits set where slot j takes j + 1
        log_q = torch.log_softmax(self._nontarget(logits.t()), dim=0)
        self.q = log_q.exp()
        self.log_2q = log_q + _LN2
        self.floor = not bool((self.q > 0).all())  # some q_j underflowed: see the module doc

    def _nontarget(self, z: Tensor) -> Tensor:
        """``(C - 1, ..., N)`` non-target logits of ``(C, ..., N)`` ones, divided by ``T``.

        Slot ``j`` takes ``z[j + 1]`` where ``shift`` and ``z[j]`` elsewhere, selected bit for
        bit as ``a ^ ((a ^ b) & mask)`` on the floats' bits: exact, and twice as fast as
        ``torch.where`` with a broadcast mask on the CPU.
        """
        z = z.float()
        below, above = z[:-1].view(torch.int32), z[1:].view(torch.int32)
        mask = self.shift_bits.view(self.c - 1, *([1] * (z.dim() - 2)), self.n)
        out = torch.bitwise_xor(above, below).bitwise_and_(mask).bitwise_xor_(below)
        out = out.view(torch.float32)
        return out if self.T == 1 else out.div_(self.T)

    def ncjsd(self, logits: Tensor) -> Tensor:
        """Per-sample NCJSD ``(..., N)`` of ``(..., N, C)`` teacher logits to the reference."""
        return self.ncjsd_classes_first(logits.movedim(-1, 0))

    def ncjsd_classes_first(self, logits: Tensor) -> Tensor:
        """Per-sample NCJSD ``(..., N)`` of ``(C, ..., N)`` teacher logits (not modified)."""
        if logits.shape[0] != self.c or logits.shape[-1] != self.n:
            raise ValueError(
                f"expected logits (C={self.c}, ..., N={self.n}), got {tuple(logits.shape)}"
            )
        view = (self.c - 1, *([1] * (logits.dim() - 2)), self.n)
        q, log_2q = self.q.view(view), self.log_2q.view(view)
        z = self._nontarget(logits)  # a fresh buffer: everything below is in place
        z.sub_(z.amax(dim=0))
        p = torch.exp(z)
        total = p.sum(dim=0)
        p.div_(total)
        z.sub_(total.log_().sub_(_LN2))  # log(2 p)
        log_pq = torch.add(p, q)
        if self.floor:
            log_pq.clamp_min_(_TINY)
        log_pq.log_()  # log(p + q) = log(2 m)
        z.sub_(log_pq).mul_(p)  # p log(p / m)
        z.addcmul_(q, torch.sub(log_2q, log_pq, out=log_pq))  # + q log(q / m)
        return z.sum(dim=0).mul_(0.5)
