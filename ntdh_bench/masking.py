"""The masking method of the paper (Sec. IV-C, second part): Algorithms 1 and 2, and the masks.

A mask scores *items* by how much non-target divergence they carry, then removes some:

* ``true`` masks the top ``mask_ratio`` of items by score, ``false`` the bottom ``mask_ratio``,
  ``random`` a seeded random set of the same size (:func:`select_masked`).
* **How many.** Exactly ``mask_count(ratio, n) = floor(ratio * n)`` items are masked, with
  ``ratio * n`` first rounded to 9 decimals so that floating-point error cannot lose one
  (``0.29 * 100`` masks 29, not 28). So a ratio of 0.25 masks 12 of 50 features and 64 of 256
  samples; a ratio too small for ``n`` masks nothing. Ties in the score are broken by position
  (the earlier item ranks higher).

**Algorithm 1, feature saliency** (:func:`joint_train`, :func:`permutation_saliency`): jointly
train ``f_a`` on ``xa`` and ``f_b`` on ``xb`` with Eq. 26,
``CE(y, f_a(xa)) + CE(y, f_b(xb)) + NCJSD(f_a(xa), f_b(xb))``; then permute item ``i`` of
``xa`` across samples ``M`` times and measure ``NCJSD(f_a(x~a), f_b(xb))`` (mean over
samples). A feature that *carries* divergence is one whose destruction lowers it, so the score
is ``NCJSD(base) - mean_M NCJSD(permuted_i)``, min-max normalised to ``[0, 1]``; the authors'
released code, which keeps the columns with the largest permuted NCJSD, ranks features the same
way. The raw permuted values are kept too (:class:`Saliency`), and ``score="permuted"`` ranks by
them as Algorithm 1 literally does (``p_i = mean_M NCJSD(permuted_i)``, ``p = p / max p``), so
that ``true`` masks the features whose permutation leaves the largest NCJSD, the paper text's
"mask the largest NCJSD". Items are single input features, or
groups of them (:func:`patch_groups`), or the channels of a hidden layer (``layer=``, the
released code's choice for MNIST and RAVDESS).

The permutation pass is vectorised: many permuted copies go through the network in one
batched forward, in chunks bounded by ``max_chunk_bytes``. Repeat ``m`` uses one permutation
of the samples for every item (common random numbers: item scores differ by the item, not by
the draw). When the network's first operation is an ``nn.Linear`` on the flattened input (every
MLP), a permuted copy differs from the original only by a rank-``g`` update of that layer's
output, ``W x~ + b = (W x + b) + W[:, G] (x~[G] - x[G])``, so the copies enter the network
after its first layer; this is checked against a direct forward once per call and otherwise
falls back to permuting the input itself. The student side of the NCJSD is computed once.
:func:`permutation_saliency_loop` is the plain one-feature-at-a-time loop it must agree with.

**Masks on features** (:class:`MaskedNetwork`): the masked features are zero in the teacher's
input (or the masked channels zero in its hidden layer). The teacher is retrained on the masked
input (default) or only fed it during distillation (``retrain_teacher: false``); the run config
records which.

**Algorithm 2, sample mask** (:class:`SampleMask`): in every training batch, each sample (each
valid, labelled pixel or point of the batch for dense outputs) is scored by its NCJSD between
teacher and student, detached, and the masked ones get ``distill_weight`` 0, which removes them
from the distillation term only (cross-entropy sees every sample). Kind ``pssm`` is the
authors' released weighting instead: ``omega = 1`` where the teacher is right, else
``(cos(z_t, z_s) + 1) / 2`` when that cosine of the logits is at least 0.996, else 0.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ModelOutput
from ntdh_bench.distillers.base import paired_logits
from ntdh_bench.divergence import decoupled_jsd, dense_keep_mask
from ntdh_bench.results import config_hash

log = logging.getLogger(__name__)

MASK_KINDS = ("true", "false", "random")
SAMPLE_MASK_KINDS = (*MASK_KINDS, "pssm")
SCORE_READINGS = ("drop", "permuted")
PSSM_THRESHOLD = 0.996
_LN2 = math.log(2.0)

SALIENCY_DEFAULTS: dict[str, Any] = {
    "repeats": 10,  # M, permutations per item
    "epochs": 30,  # joint training of Eq. 26
    "lr": 1e-3,
    "weight_decay": 0.0,
    "T": 1.0,  # temperature of the NCJSD, in training and in scoring
    "n_samples": None,  # training samples scored (None: the whole training split)
}
FEATURE_MASK_DEFAULTS: dict[str, Any] = {
    "kind": "true",
    "ratio": 0.25,
    "retrain_teacher": True,
    "score": "drop",
    "layer": None,  # a submodule name of the teacher: mask that layer's channels
    "patch": None,  # items as groups: a block of features, or an image patch [h, w]
}
SAMPLE_MASK_DEFAULTS: dict[str, Any] = {
    "kind": "true",
    "ratio": 0.25,
    "T": 1.0,
    "threshold": PSSM_THRESHOLD,
}


# --- choosing what to mask ---------------------------------------------------------------
def mask_count(ratio: float, n: int) -> int:
    """Items masked out of ``n`` at ``ratio``: ``floor(ratio * n)`` (``ratio * n`` rounded to 9
    decimals first, so that ``0.29 * 100`` gives 29)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    return math.floor(round(ratio * n, 9))


def select_masked(
    scores: Tensor | None,
    kind: str,
    ratio: float,
    n: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boolean ``(n,)``: True for the ``mask_count(ratio, n)`` items that ``kind`` masks.

    ``true`` takes the highest scores, ``false`` the lowest (ties: earlier items first),
    ``random`` a uniformly random set drawn from ``generator`` (``scores`` may then be None).
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
    masked = torch.zeros(n, dtype=torch.bool, device=device)
    if k == 0:
        return masked
    if kind == "random":
        order = torch.randperm(n, generator=generator, device=device)
    else:
        order = torch.sort(scores.detach().flatten(), descending=kind == "true", stable=True)[1]
        order = order.to(device)
    masked[order[:k]] = True
    return masked


# --- Algorithm 1: joint training (Eq. 26) --------------------------------------------------
def joint_train(
    f_a: nn.Module,
    f_b: nn.Module,
    batches: Callable[[int], Iterable[Mapping[str, Tensor]]],
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    T: float = 1.0,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Train ``f_a`` (on ``xa``) and ``f_b`` (on ``xb``) together with Eq. 26.

    ``loss = CE(y, f_a(xa)) + CE(y, f_b(xb)) + mean NCJSD(f_a(xa), f_b(xb))`` with Adam;
    dense outputs use the valid, labelled pixels. ``batches(epoch)`` yields the training
    batches of one epoch. Returns the mean loss of each epoch.
    """
    f_a.to(device).train()
    f_b.to(device).train()
    params = [p for net in (f_a, f_b) for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for raw in batches(epoch):
            batch = {k: v.to(device) for k, v in raw.items()}
            out_a, out_b = f_a(batch["xa"]), f_b(batch["xb"])
            logits_b, logits_a, target, _ = paired_logits(out_b, out_a, batch)
            _, ncjsd = decoupled_jsd(logits_a, logits_b, target, T)
            loss = (
                F.cross_entropy(logits_a, target) + F.cross_entropy(logits_b, target) + ncjsd.mean()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()), count + 1
        history.append(total / max(count, 1))
    f_a.eval()
    f_b.eval()
    return history


# --- Algorithm 1: permutation saliency ------------------------------------------------------
@dataclass
class Saliency:
    """Permutation saliency of the items of ``xa`` (Algorithm 1).

    Attributes:
        score: ``(I,)`` in ``[0, 1]``: ``NCJSD(base) - mean_M NCJSD(permuted_i)``, min-max
            normalised (all zeros when every item scores the same). High: the item carries
            divergence (destroying it lowers the NCJSD).
        permuted: ``(I, M)`` the raw NCJSD with item ``i`` permuted, repeat ``m``.
        base: the NCJSD with nothing permuted.
        groups: ``(F,)`` the item of each feature (of the flattened input, or each channel of
            ``layer``), or None when every feature is its own item.
        layer: the submodule whose output channels were scored; None for the input.
    """

    score: Tensor
    permuted: Tensor
    base: float
    groups: Tensor | None = None
    layer: str | None = None

    @property
    def drop(self) -> Tensor:
        """Unnormalised score: how much permuting each item lowers the NCJSD."""
        return self.base - self.permuted.mean(dim=1)

    def ranking(self, reading: str = "drop") -> Tensor:
        """Scores to rank items by: ``drop`` (this suite's reading, normalised) or
        ``permuted`` (the paper's literal Algorithm 1: ``mean_M NCJSD(permuted) / max``)."""
        if reading == "drop":
            return self.score
        if reading == "permuted":
            mean = self.permuted.mean(dim=1)
            return mean / mean.max().clamp_min(1e-12)
        raise ValueError(f"score reading must be one of {SCORE_READINGS}, got {reading!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score.cpu(),
            "permuted": self.permuted.cpu(),
            "base": self.base,
            "groups": None if self.groups is None else self.groups.cpu(),
            "layer": self.layer,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Saliency:
        return cls(
            score=data["score"],
            permuted=data["permuted"],
            base=float(data["base"]),
            groups=data.get("groups"),
            layer=data.get("layer"),
        )


def min_max(values: Tensor) -> Tensor:
    """``(v - min) / (max - min)``; zeros when all values are equal."""
    span = values.max() - values.min()
    if not torch.isfinite(span) or span <= 0:
        return torch.zeros_like(values)
    return (values - values.min()) / span


class NontargetReference:
    """The student side of the NCJSD, computed once, for scoring many teacher outputs.

    ``ncjsd(logits)`` equals ``decoupled_jsd(logits, reference, target, T)[1]`` (tested), but
    works on ``(K, N, C)`` stacks of teacher logits and does the reference's half once. In log
    space as :mod:`ntdh_bench.divergence`: the non-target distribution is a softmax over the
    logits with the target column removed. Classes are laid out along dim -2 (class-major),
    where PyTorch's CPU softmax over a handful of classes is an order of magnitude faster than
    along the last dim.
    """

    def __init__(self, logits: Tensor, target: Tensor, T: float = 1.0) -> None:
        if logits.dim() != 2 or logits.shape[1] < 3:
            raise ValueError(
                "NCJSD needs logits (N, C) with C >= 3 (with two classes the non-target "
                f"distribution has one class and NCJSD is 0); got {tuple(logits.shape)}"
            )
        n, c = logits.shape
        classes = torch.arange(c, device=logits.device).unsqueeze(1).expand(c, n)
        others = classes != target.long().unsqueeze(0)
        self.index = classes.t()[others.t()].view(n, c - 1).t().contiguous()  # (C - 1, N)
        self.T = T
        self.log_q = self._log_p_hat(logits.unsqueeze(0)).squeeze(0)
        self.q = self.log_q.exp()

    def _log_p_hat(self, logits: Tensor) -> Tensor:
        """``(..., C - 1, N)`` non-target log-probabilities of ``(..., N, C)`` logits."""
        index = self.index.expand(*logits.shape[:-2], *self.index.shape)
        z = logits.float().transpose(-1, -2).gather(-2, index)
        return torch.log_softmax(z if self.T == 1 else z / self.T, dim=-2)

    def ncjsd(self, logits: Tensor) -> Tensor:
        """Per-sample NCJSD ``(..., N)`` of ``(..., N, C)`` teacher logits to the reference."""
        log_p = self._log_p_hat(logits)
        log_m = torch.logaddexp(log_p, self.log_q) - _LN2
        kl_p = (log_p.exp() * (log_p - log_m)).sum(-2)
        kl_q = (self.q * (self.log_q - log_m)).sum(-2)
        return 0.5 * (kl_p + kl_q)


def patch_groups(shape: Sequence[int], patch: int | Sequence[int]) -> Tensor:
    """Item id of every feature of one flattened input of ``shape``.

    1-D inputs: consecutive blocks of ``patch`` features. ``(H, W)`` or ``(C, H, W)`` inputs:
    ``patch = [ph, pw]`` (or one int) spatial patches spanning all channels. Edge patches may
    be smaller.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        size = int(patch if isinstance(patch, int) else patch[0])
        if size < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        return torch.arange(shape[0]) // size
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    if ph < 1 or pw < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    h, w = shape[-2:]
    rows, cols = torch.arange(h) // ph, torch.arange(w) // pw
    ids = rows[:, None] * math.ceil(w / pw) + cols[None, :]
    return ids.expand(*shape[:-2], h, w).flatten()


def _item_index(groups: Tensor | None, n_features: int) -> tuple[Tensor, Tensor]:
    """``(index, valid)``: ``(I, g)`` feature indices of each item, padded with 0 / False."""
    if groups is None:
        return torch.arange(n_features).unsqueeze(1), torch.ones(n_features, 1, dtype=torch.bool)
    groups = groups.flatten().long().cpu()
    if groups.numel() != n_features:
        raise ValueError(f"groups has {groups.numel()} entries for {n_features} features")
    n_items = int(groups.max()) + 1
    members = [torch.nonzero(groups == i).flatten() for i in range(n_items)]
    width = max(len(m) for m in members)
    index = torch.zeros(n_items, width, dtype=torch.long)
    valid = torch.zeros(n_items, width, dtype=torch.bool)
    for i, m in enumerate(members):
        index[i, : len(m)] = m
        valid[i, : len(m)] = True
    return index, valid


def _first_linear(model: nn.Module, x: Tensor) -> nn.Linear | None:
    """The network's first leaf module, when it is an ``nn.Linear`` fed the flattened input."""
    calls: list[tuple[nn.Module, tuple]] = []
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [
        m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args))) for m in leaves
    ]
    probe = x[:2]
    try:
        model(probe)
    finally:
        for h in handles:
            h.remove()
    if not calls:
        return None
    module, args = calls[0]
    if not isinstance(module, nn.Linear) or not args or not isinstance(args[0], Tensor):
        return None
    flat = probe.flatten(1)
    if args[0].shape != flat.shape or not torch.equal(args[0], flat):
        return None
    return module


def _capture(model: nn.Module, module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(module's output, model's logits)`` for input ``x``."""
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        logits = model(x).logits
    finally:
        handle.remove()
    return seen[0], logits


def _with_output(model: nn.Module, module: nn.Module, x: Tensor, output: Tensor) -> Tensor:
    """The model's logits with ``module``'s output replaced by ``output`` (a stack of copies)."""
    handle = module.register_forward_hook(lambda mod, args, out: output)
    try:
        return model(x).logits
    finally:
        handle.remove()


class _Scorer:
    """Mean NCJSD per copy for a stack of copies' logits ``(K * n, C, ...)``."""

    def __init__(self, reference: Tensor, target: Tensor, valid: Tensor | None, T: float):
        self.n = reference.shape[0]
        if reference.dim() > 2:
            self.keep = dense_keep_mask(target, valid)
            flat_ref = reference.movedim(1, -1)[self.keep]
            flat_target = target[self.keep]
        else:
            self.keep, flat_ref, flat_target = None, reference, target
        if flat_target.numel() == 0:
            raise ValueError("no valid, labelled samples to score")
        self.ref = NontargetReference(flat_ref, flat_target, T)

    def __call__(self, logits: Tensor) -> Tensor:
        stack = logits.reshape(-1, self.n, *logits.shape[1:])
        if self.keep is not None:
            stack = stack.movedim(2, -1)[:, self.keep]
        return self.ref.ncjsd(stack).mean(dim=-1)


@torch.no_grad()
def permutation_saliency(
    model: nn.Module,
    xa: Tensor,
    reference_logits: Tensor,
    target: Tensor,
    *,
    repeats: int = 10,
    groups: Tensor | None = None,
    layer: str | None = None,
    valid: Tensor | None = None,
    T: float = 1.0,
    seed: int = 0,
    max_chunk_bytes: int = 2**22,
    fast: bool = True,
) -> Saliency:
    """Algorithm 1 steps 5-13: permutation saliency of ``model``'s input features.

    Args:
        model: the trained ``f_a``; called on ``xa`` and returning ``ModelOutput``.
        xa: ``(n, ...)`` the teacher-modality samples to score on.
        reference_logits: ``f_b(xb)`` logits for the same samples, ``(n, C)`` or dense.
        target: labels ``(n,)`` or ``(n, H, W)``; ``valid`` restricts dense pixels.
        repeats: ``M``, permutations per item.
        groups: item id per feature of the flattened input (or per channel of ``layer``).
        layer: score the output channels of this submodule instead of the input.
        seed: seeds the ``M`` permutations.
        max_chunk_bytes: bound on the memory of one batched forward's copies.
        fast: allow the rank-``g`` update of a first ``nn.Linear`` (checked, see module doc).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    model.eval()
    n = xa.shape[0]
    device = xa.device
    gen = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(repeats)]).to(device)
    scorer = _Scorer(reference_logits, target, valid, T)
    c = reference_logits.shape[1]
    out_elems = math.prod(reference_logits.shape[1:])

    # The copies enter the network at a "site" whose output they replace (a hidden layer, or
    # the first linear layer), or as inputs (site None). When they replace a site's output,
    # the network is called on one sample: the layers before the site are not recomputed.
    probe = xa[:1]
    if layer is not None:
        site: nn.Module | None = model.get_submodule(layer)
        base_site, base_logits = _capture(model, site, xa)
        if not _same_logits(_with_output(model, site, probe, base_site), base_logits):
            raise ValueError(
                f"saliency of layer {layer!r}: the network's output does not depend on the "
                "input only through this layer (a skip connection around it?); pick another"
            )
    else:
        base_logits = model(xa).logits
        base_site = xa.flatten(1)
        site = _first_linear(model, xa) if fast else None
        if site is not None and not _linear_path_agrees(model, site, xa, perms[0]):
            log.warning("saliency: the first-layer shortcut disagrees with a direct forward")
            site = None
    feats = base_site.shape[1]
    shortcut = layer is None and site is not None
    if shortcut:
        weight = site.weight.t()  # (F, h)
        base_pre = site(base_site)
        site_elems = base_pre.shape[1]
    else:
        site_elems = math.prod(base_site.shape[1:])

    def stack_for(permuted_site: Tensor, index: Tensor, valid_: Tensor) -> Tensor:
        """``(k, n, ...)`` copies of the site's output, item ``j`` of copy ``j`` permuted."""
        if shortcut:  # W x~ + b = (W x + b) + W[:, G] (x~[G] - x[G]); permuted_site = x~ - x
            if index.shape[1] == 1:
                return torch.addcmul(
                    base_pre, permuted_site[index[:, 0]].unsqueeze(2), weight[index]
                )
            w = weight[index] * valid_.unsqueeze(2)  # (k, g, h)
            return base_pre + torch.bmm(permuted_site[index].transpose(1, 2), w)
        member = torch.zeros(index.shape[0], feats, dtype=torch.bool, device=device)
        member.scatter_(1, index, valid_.bool())
        member = member.view(index.shape[0], 1, feats, *([1] * (base_site.dim() - 2)))
        return torch.where(member, permuted_site.unsqueeze(0), base_site.unsqueeze(0))

    def logits_of(stack: Tensor) -> Tensor:
        rows = stack.reshape(-1, *stack.shape[2:])
        if site is None:
            return model(rows.view(-1, *xa.shape[1:])).logits
        return _with_output(model, site, probe, rows)

    base = float(scorer(base_logits).mean())
    index, valid_items = _item_index(groups, feats)
    index, valid_items = index.to(device), valid_items.to(device)
    n_items = index.shape[0]
    row_bytes = 4 * (site_elems + 6 * max(out_elems, c))
    per_chunk = max(1, max_chunk_bytes // max(1, row_bytes * n))
    permuted = torch.empty(n_items, repeats)
    for m in range(repeats):
        permuted_site = base_site[perms[m]]
        if shortcut:  # features first: the rows of one item are contiguous
            permuted_site = (permuted_site - base_site).t().contiguous()
        for start in range(0, n_items, per_chunk):
            stop = min(start + per_chunk, n_items)
            valid_ = valid_items[start:stop].to(base_site.dtype)
            stack = stack_for(permuted_site, index[start:stop], valid_)
            permuted[start:stop, m] = scorer(logits_of(stack)).float().cpu()
    drop = base - permuted.mean(dim=1)
    return Saliency(score=min_max(drop), permuted=permuted, base=base, groups=groups, layer=layer)


def _same_logits(got: Tensor, expected: Tensor) -> bool:
    return got.shape == expected.shape and bool(torch.allclose(got, expected, rtol=1e-4, atol=1e-5))


def _linear_path_agrees(model: nn.Module, first: nn.Linear, xa: Tensor, perm: Tensor) -> bool:
    """Whether the first-layer shortcut reproduces a direct forward of one permuted input."""
    flat = xa.flatten(1)
    col = min(1, flat.shape[1] - 1)
    direct = flat.clone()
    direct[:, col] = flat[perm, col]
    expected = model(direct.view_as(xa)).logits
    delta = (flat[perm, col] - flat[:, col]).unsqueeze(1)
    got = _with_output(model, first, xa[:1], first(flat) + delta * first.weight[:, col])
    return _same_logits(got, expected)


@torch.no_grad()
def permutation_saliency_loop(
    model: nn.Module,
    xa: Tensor,
    reference_logits: Tensor,
    target: Tensor,
    *,
    repeats: int = 10,
    groups: Tensor | None = None,
    T: float = 1.0,
    seed: int = 0,
    items: int | None = None,
) -> Saliency:
    """The plain loop of Algorithm 1: one permuted input and one forward per item and repeat.

    Same permutations as :func:`permutation_saliency` (so the two agree to rounding), NCJSD
    from :func:`ntdh_bench.divergence.decoupled_jsd`. Classification outputs only. ``items``
    scores only the first ``items`` items (the benchmark times a slice). The reference for
    tests and for ``benchmarks/saliency_speed.py``.
    """
    model.eval()
    n = xa.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(repeats)]).to(xa.device)
    flat = xa.flatten(1)
    index, valid = _item_index(groups, flat.shape[1])
    members = [index[i][valid[i]].to(xa.device) for i in range(index.shape[0])]
    if items is not None:
        members = members[:items]

    def ncjsd(x: Tensor) -> float:
        return float(decoupled_jsd(model(x).logits, reference_logits, target, T)[1].mean())

    base = ncjsd(xa)
    permuted = torch.empty(len(members), repeats)
    for i, cols in enumerate(members):
        for m in range(repeats):
            x = flat.clone()
            x[:, cols] = flat[perms[m].unsqueeze(1), cols]
            permuted[i, m] = ncjsd(x.view_as(xa))
    drop = base - permuted.mean(dim=1)
    return Saliency(score=min_max(drop), permuted=permuted, base=base, groups=groups)


# --- masks on features --------------------------------------------------------------------
class MaskedNetwork(nn.Module):
    """A network whose input features (or one hidden layer's channels) are masked to zero.

    ``keep`` is 1 for kept and 0 for masked entries: shaped like one input sample, or
    ``(channels,)`` of ``layer``. Used for the teacher, both when it is retrained on the masked
    input and when it is only fed it; ``keep`` is a buffer, saved with the weights.
    """

    def __init__(self, net: nn.Module, keep: Tensor, layer: str | None = None) -> None:
        super().__init__()
        self.net = net
        self.layer = layer
        self.register_buffer("keep", keep.detach().float().clone())
        if layer is not None:
            net.get_submodule(layer).register_forward_hook(self._mask_channels)

    def _mask_channels(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output * self.keep.view(1, -1, *([1] * (output.dim() - 2))).to(output.dtype)

    def forward(self, x: Tensor) -> ModelOutput:
        if self.layer is None:
            x = x * self.keep.to(x.dtype)
        return self.net(x)

    @property
    def masked_fraction(self) -> float:
        return float((self.keep == 0).float().mean())

    def extra_repr(self) -> str:
        where = "input" if self.layer is None else f"layer {self.layer!r}"
        return f"{where}, masked {int((self.keep == 0).sum())} of {self.keep.numel()}"


def feature_keep_mask(
    kind: str,
    ratio: float,
    shape: Sequence[int],
    saliency: Saliency | None = None,
    groups: Tensor | None = None,
    seed: int = 0,
    reading: str = "drop",
) -> Tensor:
    """The ``keep`` tensor (1 kept, 0 masked) of a feature mask over items.

    ``shape`` is one input sample's shape (or ``(channels,)`` for a hidden layer). Items are
    single features, or the groups of ``groups``; ``mask_count(ratio, items)`` items are masked.
    """
    n_features = math.prod(shape)
    if groups is None and saliency is not None:
        groups = saliency.groups
    n_items = n_features if groups is None else int(groups.max()) + 1
    scores = None
    if kind != "random":
        if saliency is None:
            raise ValueError(f"a {kind!r} feature mask needs a saliency")
        scores = saliency.ranking(reading)
        if scores.numel() != n_items:
            raise ValueError(f"saliency scores {scores.numel()} items, the mask has {n_items}")
    generator = torch.Generator().manual_seed(seed)
    masked_items = select_masked(scores, kind, ratio, n=n_items, generator=generator)
    masked = masked_items if groups is None else masked_items[groups.flatten().long()]
    return (~masked).float().view(*shape)


# --- feature masks from run configs --------------------------------------------------------
def resolve_feature_mask(spec: Mapping[str, Any] | None, seed: int) -> dict[str, Any] | None:
    """A feature-mask config section with every default filled in (so the run hash names it).

    ``seed`` (the run's seed by default) draws the ``random`` mask's features.
    """
    if not spec:
        return None
    unknown = set(spec) - set(FEATURE_MASK_DEFAULTS) - {"seed", "saliency"}
    if unknown:
        raise ValueError(
            f"feature_mask has no option(s) {sorted(unknown)}; options: "
            f"{sorted([*FEATURE_MASK_DEFAULTS, 'seed', 'saliency'])}"
        )
    out = {**FEATURE_MASK_DEFAULTS, "seed": seed, **spec}
    saliency = dict(spec.get("saliency") or {})
    bad = set(saliency) - set(SALIENCY_DEFAULTS)
    if bad:
        raise ValueError(
            f"feature_mask.saliency has no option(s) {sorted(bad)}; options: "
            f"{sorted(SALIENCY_DEFAULTS)}"
        )
    out["saliency"] = {**SALIENCY_DEFAULTS, **saliency}
    _check_feature_mask(out)
    return out


def _check_feature_mask(spec: Mapping[str, Any]) -> None:
    if spec["kind"] not in MASK_KINDS:
        raise ValueError(f"feature_mask.kind must be one of {MASK_KINDS}, got {spec['kind']!r}")
    mask_count(float(spec["ratio"]), 1)
    if spec["score"] not in SCORE_READINGS:
        raise ValueError(
            f"feature_mask.score must be one of {SCORE_READINGS}, got {spec['score']!r}"
        )
    if spec["patch"] is not None and spec["layer"] is not None:
        raise ValueError("feature_mask: 'patch' groups input features; it cannot go with 'layer'")


def saliency_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What defines a run's saliency: data, networks, seed, the saliency settings and items."""
    spec = config["feature_mask"]
    return {
        "dataset": config["dataset"],
        "model": config["model"],
        "seed": config["seed"],
        "saliency": spec["saliency"],
        "layer": spec["layer"],
        "patch": spec["patch"],
    }


def _collect(batches: Iterable[Mapping[str, Tensor]], limit: int | None) -> dict[str, Tensor]:
    parts: dict[str, list[Tensor]] = {}
    count = 0
    for batch in batches:
        for key, value in batch.items():
            parts.setdefault(key, []).append(value)
        count += len(batch["y"])
        if limit is not None and count >= limit:
            break
    data = {k: torch.cat(v) for k, v in parts.items()}
    return data if limit is None else {k: v[:limit] for k, v in data.items()}


def compute_feature_saliency(
    spec: Mapping[str, Any],
    datamodule: Any,
    network: Callable[[str], nn.Module],
    seed: int,
    device: str | torch.device = "cpu",
) -> Saliency:
    """Algorithm 1 on a datamodule: Eq. 26 joint training, then permutation saliency.

    ``network(modality)`` builds a fresh ``f_a`` (``"xa"``) or ``f_b`` (``"xb"``); the training
    split is used for both stages (its first ``n_samples`` for scoring).
    """
    settings = spec["saliency"]
    torch.manual_seed(seed)
    f_a, f_b = network("xa"), network("xb")
    loader = datamodule.train_dataloader()

    def epoch_batches(epoch: int) -> Iterable[Mapping[str, Tensor]]:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return loader

    joint_train(
        f_a,
        f_b,
        epoch_batches,
        epochs=settings["epochs"],
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
        T=settings["T"],
        device=device,
    )
    if getattr(datamodule, "uses_tensor_path", False):
        train = datamodule.split_tensors("train")
        limit = settings["n_samples"]
        data = {k: v if limit is None else v[:limit] for k, v in train.items()}
    else:
        data = _collect(epoch_batches(0), settings["n_samples"])
    data = {k: v.to(device) for k, v in data.items()}
    with torch.no_grad():
        reference = f_b(data["xb"]).logits
    groups = None if spec["patch"] is None else patch_groups(data["xa"].shape[1:], spec["patch"])
    return permutation_saliency(
        f_a,
        data["xa"],
        reference,
        data["y"],
        repeats=settings["repeats"],
        groups=groups,
        layer=spec["layer"],
        valid=data.get("valid"),
        T=settings["T"],
        seed=seed,
    )


def load_or_compute_saliency(
    config: Mapping[str, Any],
    datamodule: Any,
    network: Callable[[str], nn.Module],
    cache_dir: str | Path,
    device: str | torch.device = "cpu",
) -> Saliency:
    """The saliency of a run config, cached as ``<cache_dir>/saliency/<hash>.pt``.

    The hash is that of :func:`saliency_identity`: every run of every experiment that shares
    data, networks, seed and saliency settings shares one saliency.
    """
    identity = saliency_identity(config)
    path = Path(cache_dir) / "saliency" / f"{config_hash(identity)}.pt"
    if path.exists():
        return Saliency.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    saliency = compute_feature_saliency(
        config["feature_mask"], datamodule, network, config["seed"], device
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({**saliency.to_dict(), "identity": identity}, tmp)
    tmp.replace(path)
    return saliency


def build_feature_mask(
    config: Mapping[str, Any],
    datamodule: Any,
    network: Callable[[str], nn.Module],
    cache_dir: str | Path,
    device: str | torch.device = "cpu",
) -> Callable[[nn.Module], MaskedNetwork]:
    """From a run config with a ``feature_mask`` section: a function that masks a teacher."""
    spec = config["feature_mask"]
    saliency = None
    if spec["kind"] != "random":
        saliency = load_or_compute_saliency(config, datamodule, network, cache_dir, device)
    if spec["layer"] is None:
        shape: tuple[int, ...] = tuple(datamodule.input_shapes()[0])
        groups = None if saliency is None else saliency.groups
        if groups is None and spec["patch"] is not None:
            groups = patch_groups(shape, spec["patch"])
    else:
        probe = network("xa").eval()
        sample = torch.zeros(1, *datamodule.input_shapes()[0])
        with torch.no_grad():
            out, _ = _capture(probe, probe.get_submodule(spec["layer"]), sample)
        shape, groups = (out.shape[1],), None
    keep = feature_keep_mask(
        spec["kind"], spec["ratio"], shape, saliency, groups, spec["seed"], spec["score"]
    )

    def wrap(net: nn.Module) -> MaskedNetwork:
        return MaskedNetwork(net, keep, spec["layer"])

    return wrap


# --- Algorithm 2: the sample mask ----------------------------------------------------------
def pssm_weights(
    logits_t: Tensor, logits_s: Tensor, target: Tensor, threshold: float = PSSM_THRESHOLD
) -> Tensor:
    """The released code's per-sample weight ``omega`` for ``(N, C)`` logits.

    ``omega = 1`` where the teacher's argmax is the target; elsewhere
    ``(cos(z_t, z_s) + 1) / 2`` when that cosine is at least ``threshold``, else 0.
    """
    cos = F.cosine_similarity(logits_t.float(), logits_s.float(), dim=1)
    soft = torch.where(cos >= threshold, (cos + 1) / 2, torch.zeros_like(cos))
    right = logits_t.argmax(dim=1) == target
    return torch.where(right, torch.ones_like(cos), soft)


class SampleMask:
    """Algorithm 2: per-batch weights that drop samples from the distillation term only.

    ``kind``: ``true`` drops the ``mask_count(ratio, n)`` items of the batch with the largest
    NCJSD between teacher and student (at temperature ``T``, detached), ``false`` the smallest,
    ``random`` a random set of that size (drawn from a generator seeded by ``seed``), ``pssm``
    weights by :func:`pssm_weights` (``ratio`` unused). Items are the samples of a
    classification batch, or the valid, labelled pixels (points) of the whole batch for dense
    outputs; ``n`` counts them.
    """

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

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SampleMask:
        return cls(**spec)

    def _gen(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def item_weights(self, logits_t: Tensor, logits_s: Tensor, target: Tensor) -> Tensor:
        """``(N,)`` weights for flattened ``(N, C)`` logits: 0 masked, 1 kept (or omega)."""
        logits_t, logits_s = logits_t.detach(), logits_s.detach()
        if self.kind == "pssm":
            return pssm_weights(logits_t, logits_s, target, self.threshold)
        scores = None
        if self.kind != "random":
            scores = decoupled_jsd(logits_t, logits_s, target, self.T)[1]
        generator = self._gen(logits_t.device) if self.kind == "random" else None
        masked = select_masked(scores, self.kind, self.ratio, len(target), generator)
        return (~masked.to(logits_t.device)).to(logits_t.dtype)

    def __call__(
        self, student: ModelOutput, teacher: ModelOutput, batch: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """``(distill_weight, masked_fraction)`` for one training batch.

        ``distill_weight`` has the batch's layout: ``(B,)``, or ``(B, H, W)`` with 0 outside the
        valid, labelled pixels; ``masked_fraction`` is the share of scored items whose weight
        is 0.
        """
        logits_s, logits_t, target, _ = paired_logits(student, teacher, dict(batch))
        weight = self.item_weights(logits_t, logits_s, target)
        fraction = (weight == 0).float().mean() if weight.numel() else weight.sum()
        if student.logits.dim() == 2:
            return weight, fraction
        keep = dense_keep_mask(batch["y"], batch.get("valid"))
        full = torch.zeros(keep.shape, dtype=weight.dtype, device=weight.device)
        full[keep] = weight
        return full, fraction

    def __repr__(self) -> str:
        return f"SampleMask(kind={self.kind!r}, ratio={self.ratio}, T={self.T}, seed={self.seed})"


def resolve_sample_mask(spec: Mapping[str, Any] | None, seed: int) -> dict[str, Any] | None:
    """A sample-mask config section with every default filled in (``seed``: the run's)."""
    if not spec:
        return None
    unknown = set(spec) - set(SAMPLE_MASK_DEFAULTS) - {"seed"}
    if unknown:
        raise ValueError(
            f"sample_mask has no option(s) {sorted(unknown)}; options: "
            f"{sorted([*SAMPLE_MASK_DEFAULTS, 'seed'])}"
        )
    out = {**SAMPLE_MASK_DEFAULTS, "seed": seed, **spec}
    SampleMask.from_spec(out)  # validates
    return out


def resolve_masks(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run config with its ``feature_mask`` and ``sample_mask`` sections resolved.

    Fills every default and checks every value (:func:`resolve_feature_mask`,
    :func:`resolve_sample_mask`); empty sections are dropped. Idempotent.
    """
    out = dict(config)
    for key, resolve in (
        ("feature_mask", resolve_feature_mask),
        ("sample_mask", resolve_sample_mask),
    ):
        spec = resolve(config.get(key), config.get("seed", 0))
        if spec is None:
            out.pop(key, None)
        else:
            out[key] = spec
    if "sample_mask" in out and out.get("role") not in (None, "kd"):
        raise ValueError(f"a sample mask weighs a distillation term; role {out['role']!r} has none")
    return out
