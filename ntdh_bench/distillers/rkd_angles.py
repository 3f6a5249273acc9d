"""RKD's angle-wise loss without its ``B^3 x D`` product and without ``B^3`` tensors in memory.

The loss is ``mean_jik huber(a_s[j, i, k] - a_t[j, i, k])`` over a batch's ``B^3`` triplets,
where ``a[j, i, k] = <u_ji, u_jk>`` is the cosine of the angle at ``e_j`` between ``e_i`` and
``e_k`` (``u_ji`` the unit vector from ``e_j`` to ``e_i``, 0 where the points coincide) and
``huber`` is ``smooth_l1_loss`` with beta 1.

The direct form normalises the ``B x B x D`` differences and multiplies them together:
``B^3 D`` multiply-adds and several ``B^3`` tensors kept for the backward pass (a 128-sample
batch of 256-wide embeddings: 0.5 G multiply-adds a side, 90 ms a step on one CPU core; at
256 samples, half a gigabyte of tensors). Here the law of cosines gives each cosine from the
squared distances, ``<e_i - e_j, e_k - e_j> = (d2_ji + d2_jk - d2_ik) / 2``, so only the
``B x B`` Gram matrix touches ``D``; and :class:`_AngleLoss` visits the triplets a block of
vertices ``j`` at a time, in forward and backward alike, so that no ``B^3`` tensor is stored
and each block stays in cache.

Close points make the squared distances cancel, so they are formed in float64 from embeddings
centred on their mean (cosines do not change under translation), and the triplets are scored
in float64: the cosines agree with the direct form computed in float64 to about 1e-15, where
the direct form in float32 is off by about 5e-7 (``tests/distillers/test_rkd_angles.py``).
One deliberate difference: where two points coincide, the cosines are not differentiable; the
direct form's normalisation divides by its eps there (gradients of 1e6 and more), this form
gives those pairs no gradient.

Speed on one CPU core, forward and backward of both sides (``make bench``'s
``distiller_step_time.py`` and ``benchmarks/RESULTS.md``): 128 samples of 256 features about
30 ms against the direct form's 125 ms, of 1024 features 30 against 850 ms; for very narrow
embeddings (16 features) the two are about even at 256 samples and the direct form is faster
at 128 (10 against 20 ms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_ELEMENTS = 2**17  # triplets per block: 1 MiB of float64, a core's cache


def angle_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """``mean_jik huber(a_s - a_t)`` for ``(B, D_s)`` and ``(B, D_t)`` embeddings, in
    ``e_s``'s dtype (gradients reach both embeddings where they require them)."""
    return _AngleLoss.apply(*_sides(e_s), *_sides(e_t)).to(e_s.dtype)


def cosines(e: Tensor) -> Tensor:
    """The whole ``(B, B, B)`` float64 tensor of cosines ``a[j, i, k]``, for inspection and
    tests; the loss never builds it."""
    sides = _sides(e)
    nothing = tuple(torch.zeros_like(t) for t in sides)  # a "teacher" whose cosines are all 0
    return _block_difference((*sides, *nothing), slice(0, len(e)))[0]


def _sides(e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """float64 ``(d, 1 / d, d2)`` of all pairs, 0 on the diagonal. ``d`` and ``1 / d`` are 0
    for points that coincide to float64 resolution: their direction is undefined (cosine 0,
    as the direct form's zero difference gives)."""
    x = e.double()
    x = x - x.mean(dim=0)
    squared = x.pow(2).sum(dim=1)
    d2 = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2.0 * x @ x.T).clamp_min(0.0)
    # below this a squared distance is the Gram matrix's rounding, not a distance
    resolution = 64 * torch.finfo(torch.float64).eps * squared.detach().max()
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    distinct = off_diagonal & (d2 > resolution)
    d2 = d2 * off_diagonal
    # rsqrt only ever sees a distance, so its gradient stays finite
    inverse = torch.where(distinct, torch.where(distinct, d2, 1.0).rsqrt(), 0.0)
    return d2 * inverse, inverse, d2


def _blocks(n: int) -> list[slice]:
    rows = max(1, BLOCK_ELEMENTS // (n * n))
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


def _squares(p: Tensor) -> Tensor:
    """``p p^T`` for each row block ``p`` of ``1 / d``."""
    return p.unsqueeze(2) * p.unsqueeze(1)


def _block_difference(sides: tuple[Tensor, ...], rows: slice) -> tuple[Tensor, Tensor]:
    """Student's minus teacher's cosines at the vertices ``j`` in ``rows``, and the student's
    ``p p^T`` (its backward needs it). With ``q = d_j.`` and ``p = 1 / d_j.``, a side's
    cosines are ``a[j] = (q p^T + p q^T - d2 * p p^T) / 2`` (the law of cosines divided by
    ``d_ji d_jk``): both sides' outer products in one batched product, then the ``d2`` terms
    added, five passes over the block in all."""
    (q_s, p_s, d2_s), (q_t, p_t, d2_t) = (
        (d[rows], inverse[rows], d2) for d, inverse, d2 in (sides[:3], sides[3:])
    )
    left = torch.stack([q_s, p_s, q_t.neg(), p_t.neg()], dim=2) * 0.5
    diff = left @ torch.stack([p_s, q_s, p_t, q_t], dim=1)
    squares_s = _squares(p_s)
    diff = torch.addcmul(diff, squares_s, d2_s, value=-0.5)
    return torch.addcmul(diff, _squares(p_t), d2_t, value=0.5), squares_s


class _AngleLoss(torch.autograd.Function):
    """The mean Huber loss of the cosine differences from both sides' ``(d, 1 / d, d2)``,
    block by block of vertices; backward recomputes each block's cosines rather than keep
    them. Written with out-of-place operations only, which ``vmap`` (the ensembles' members)
    batches without falling back to a loop."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*sides: Tensor) -> Tensor:
        n = sides[0].shape[0]
        total = sum(
            F.smooth_l1_loss(diff, torch.zeros_like(diff), reduction="sum")
            for diff, _ in (_block_difference(sides, rows) for rows in _blocks(n))
        )
        return total / n**3

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        sides = ctx.saved_tensors
        n = sides[0].shape[0]
        wanted = [k for k in (0, 1) if any(ctx.needs_input_grad[3 * k : 3 * k + 3])]
        # per side: the row blocks of d's and 1/d's gradients, and the running sum over blocks
        # for d2's (each block touches all of it)
        rows_d: dict[int, list[Tensor]] = {k: [] for k in wanted}
        rows_inverse: dict[int, list[Tensor]] = {k: [] for k in wanted}
        columns: dict[int, Tensor | float] = dict.fromkeys(wanted, 0.0)
        for rows in _blocks(n):
            diff, squares_s = _block_difference(sides, rows)
            slope = diff.clamp(-1.0, 1.0)  # d huber / d diff, symmetric in i, k
            for k in wanted:
                squares = squares_s if k == 0 else _squares(sides[4][rows])
                g = _block_gradient(*sides[3 * k : 3 * k + 3], rows, slope, squares)
                rows_d[k].append(g[0])
                rows_inverse[k].append(g[1])
                columns[k] = columns[k] + g[2]
        out: list[Tensor | None] = [None] * 6
        for k in wanted:
            scale = (grad if k == 0 else -grad) / n**3
            grads = (torch.cat(rows_d[k]), torch.cat(rows_inverse[k]), -0.5 * columns[k])
            for m, g in enumerate(grads):
                if ctx.needs_input_grad[3 * k + m]:
                    out[3 * k + m] = g * scale
        return tuple(out)


def _block_gradient(
    d: Tensor, inverse: Tensor, d2: Tensor, rows: slice, slope: Tensor, squares: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One block's share of the gradient of ``sum slope * a`` (``slope`` symmetric in
    ``i, k``), with ``q = d[rows]``, ``p = inverse[rows]``: ``G p`` for those rows of ``d``,
    ``G q - (G * d2) p`` for those rows of ``1 / d``, and ``sum_j G * p p^T`` (the whole
    ``d2`` gets ``-1/2`` of it)."""
    q, p = d[rows], inverse[rows]
    p_q = slope @ torch.stack([p, q], dim=2)
    g_inverse = p_q[..., 1] - ((slope * d2) @ p.unsqueeze(2)).squeeze(2)
    g_columns = (slope * squares).sum(dim=0)
    return p_q[..., 0], g_inverse, g_columns
