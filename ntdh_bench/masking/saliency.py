"""Algorithm 1, steps 5-13: score each item of ``xa`` by the NCJSD it leaves or removes.

Two readings, both on the Eq. 26-trained ``f_a`` against the trained ``f_b``'s outputs:

* ``permuted`` (the paper's Algorithm 1, the default): permute item ``i`` across samples ``M``
  times; ``p_i = mean_M NCJSD(f_a(x~a), f_b(xb))``, ``score = p / max p``. ``true`` masks the
  items whose permutation gives the largest NCJSD.
* ``ablation``: zero item ``i`` once; ``score = NCJSD(base) - NCJSD(zeroed_i)``. ``true`` masks
  the items whose removal lowers the divergence most, the items that *carry* it.

Items are single input features, groups of them (:func:`patch_groups`), or the channels of a
hidden layer (``layer=``). One engine serves both readings: each perturbation is a
replacement of the site's values (permuted rows, or zeros), and many perturbed copies go
through the network in one batched forward, in chunks bounded by ``max_chunk_bytes``. When the
network's first operation is an ``nn.Linear`` on the flattened input (every MLP), a copy differs
from the original by a rank-``g`` update of that layer's output,
``W x~ + b = (W x + b) + W[:, G] (x~[G] - x[G])``, so copies enter after the first layer
(checked against a direct forward once per call). :func:`saliency_loop` is the plain
one-item-at-a-time loop the engine must agree with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ntdh_bench.divergence import decoupled_jsd, dense_keep_mask

log = logging.getLogger(__name__)

SCORE_READINGS = ("permuted", "ablation")
_LN2 = math.log(2.0)


@dataclass
class Saliency:
    """The scores of Algorithm 1 for the items of ``xa``.

    Attributes:
        reading: ``permuted`` or ``ablation``.
        perturbed: ``(I, R)`` the raw NCJSD with item ``i`` perturbed (``R = M`` permutations,
            or one zeroing).
        base: the NCJSD with nothing perturbed.
        groups: ``(F,)`` the item of each feature, or None when each feature is an item.
        layer: the submodule whose output channels were scored; None for the input.
    """

    reading: str
    perturbed: Tensor
    base: float
    groups: Tensor | None = None
    layer: str | None = None

    def __post_init__(self) -> None:
        if self.reading not in SCORE_READINGS:
            raise ValueError(f"score reading must be one of {SCORE_READINGS}, got {self.reading!r}")

    @property
    def score(self) -> Tensor:
        """``(I,)``: the higher, the earlier a ``true`` mask takes the item."""
        mean = self.perturbed.mean(dim=1)
        if self.reading == "permuted":
            return mean / mean.max().clamp_min(1e-12)
        return self.base - mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "reading": self.reading,
            "perturbed": self.perturbed.cpu(),
            "base": self.base,
            "groups": None if self.groups is None else self.groups.cpu(),
            "layer": self.layer,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Saliency:
        return cls(
            reading=str(data["reading"]),
            perturbed=data["perturbed"],
            base=float(data["base"]),
            groups=data.get("groups"),
            layer=data.get("layer"),
        )


class NontargetReference:
    """The student side of the NCJSD, computed once, for scoring many teacher outputs.

    ``ncjsd(logits)`` equals ``decoupled_jsd(logits, reference, target, T)[1]`` (tested) on
    ``(K, N, C)`` stacks. In log space: the non-target distribution is a softmax over the logits
    with the target column removed. Classes lie along dim -2, where PyTorch's CPU softmax over a
    handful of classes is an order of magnitude faster than along the last dim.
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

    1-D inputs: blocks of ``patch`` consecutive features. ``(H, W)`` or ``(C, H, W)`` inputs:
    ``patch = [ph, pw]`` (or one int) spatial patches spanning all channels; edge patches may
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


def item_index(groups: Tensor | None, n_features: int) -> tuple[Tensor, Tensor]:
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


def capture(model: nn.Module, module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
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


def permutations(n: int, repeats: int, seed: int) -> Tensor:
    """``(repeats, n)``: the sample permutations of Algorithm 1, one per repeat."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=gen) for _ in range(repeats)])


@torch.no_grad()
def compute_saliency(
    model: nn.Module,
    xa: Tensor,
    reference_logits: Tensor,
    target: Tensor,
    *,
    reading: str = "permuted",
    repeats: int = 10,
    groups: Tensor | None = None,
    layer: str | None = None,
    valid: Tensor | None = None,
    T: float = 1.0,
    seed: int = 0,
    max_chunk_bytes: int = 2**22,
    fast: bool = True,
) -> Saliency:
    """Algorithm 1's scores of ``model``'s input features (or ``layer``'s channels).

    Args:
        model: the Eq. 26-trained ``f_a``, returning ``ModelOutput``.
        xa: ``(n, ...)`` the teacher-modality samples to score on.
        reference_logits: ``f_b(xb)`` for the same samples, ``(n, C)`` or dense.
        target: labels ``(n,)`` or dense; ``valid`` restricts dense pixels.
        reading: ``permuted`` (``repeats`` permutations seeded by ``seed``) or ``ablation``
            (one zeroing; ``repeats`` unused).
        groups: item id per feature of the flattened input (or per channel of ``layer``).
        max_chunk_bytes: bound on the memory of one batched forward's copies.
        fast: allow the rank-``g`` update of a first ``nn.Linear`` (see the module doc).
    """
    if reading not in SCORE_READINGS:
        raise ValueError(f"score reading must be one of {SCORE_READINGS}, got {reading!r}")
    model.eval()
    n = xa.shape[0]
    device = xa.device
    perms = permutations(n, repeats, seed).to(device) if reading == "permuted" else None
    scorer = _Scorer(reference_logits, target, valid, T)
    c = reference_logits.shape[1]
    out_elems = math.prod(reference_logits.shape[1:])

    # Copies enter the network at a "site" whose output they replace (a hidden layer or the
    # first linear layer), or as inputs (site None); at a site the layers before it run once.
    probe = xa[:1]
    if layer is not None:
        site: nn.Module | None = model.get_submodule(layer)
        base_site, base_logits = capture(model, site, xa)
        if not _same_logits(_with_output(model, site, probe, base_site), base_logits):
            raise ValueError(
                f"saliency of layer {layer!r}: the network's output does not depend on the "
                "input only through this layer (a skip connection around it?); pick another"
            )
    else:
        base_logits = model(xa).logits
        base_site = xa.flatten(1)
        site = _first_linear(model, xa) if fast else None
        check = perms[0] if perms is not None else None
        if site is not None and not _linear_path_agrees(model, site, xa, check):
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

    def stack_for(replacement: Tensor, index: Tensor, valid_: Tensor) -> Tensor:
        """``(k, n, ...)`` copies of the site's output, item ``j`` of copy ``j`` replaced."""
        if shortcut:  # replacement holds x~ - x, features first
            if index.shape[1] == 1:
                return torch.addcmul(base_pre, replacement[index[:, 0]].unsqueeze(2), weight[index])
            w = weight[index] * valid_.unsqueeze(2)  # (k, g, h)
            return base_pre + torch.bmm(replacement[index].transpose(1, 2), w)
        member = torch.zeros(index.shape[0], feats, dtype=torch.bool, device=device)
        member.scatter_(1, index, valid_.bool())
        member = member.view(index.shape[0], 1, feats, *([1] * (base_site.dim() - 2)))
        return torch.where(member, replacement.unsqueeze(0), base_site.unsqueeze(0))

    def logits_of(stack: Tensor) -> Tensor:
        rows = stack.reshape(-1, *stack.shape[2:])
        if site is None:
            return model(rows.view(-1, *xa.shape[1:])).logits
        return _with_output(model, site, probe, rows)

    base = float(scorer(base_logits).mean())
    index, valid_items = item_index(groups, feats)
    index, valid_items = index.to(device), valid_items.to(device)
    n_items = index.shape[0]
    row_bytes = 4 * (site_elems + 6 * max(out_elems, c))
    per_chunk = max(1, max_chunk_bytes // max(1, row_bytes * n))
    replacements = (
        [base_site[p] for p in perms] if perms is not None else [torch.zeros_like(base_site)]
    )
    perturbed = torch.empty(n_items, len(replacements))
    for r, replacement in enumerate(replacements):
        if shortcut:  # features first: the rows of one item are contiguous
            replacement = (replacement - base_site).t().contiguous()
        for start in range(0, n_items, per_chunk):
            stop = min(start + per_chunk, n_items)
            valid_ = valid_items[start:stop].to(base_site.dtype)
            stack = stack_for(replacement, index[start:stop], valid_)
            perturbed[start:stop, r] = scorer(logits_of(stack)).float().cpu()
    return Saliency(reading, perturbed, base, groups=groups, layer=layer)


def _same_logits(got: Tensor, expected: Tensor) -> bool:
    return got.shape == expected.shape and bool(torch.allclose(got, expected, rtol=1e-4, atol=1e-5))


def _linear_path_agrees(
    model: nn.Module, first: nn.Linear, xa: Tensor, perm: Tensor | None
) -> bool:
    """Whether the first-layer shortcut reproduces a direct forward of one perturbed input
    (column 1 permuted by ``perm``, or zeroed when ``perm`` is None)."""
    flat = xa.flatten(1)
    col = min(1, flat.shape[1] - 1)
    direct = flat.clone()
    direct[:, col] = flat[perm, col] if perm is not None else 0.0
    expected = model(direct.view_as(xa)).logits
    delta = (direct[:, col] - flat[:, col]).unsqueeze(1)
    got = _with_output(model, first, xa[:1], first(flat) + delta * first.weight[:, col])
    return _same_logits(got, expected)


@torch.no_grad()
def saliency_loop(
    model: nn.Module,
    xa: Tensor,
    reference_logits: Tensor,
    target: Tensor,
    *,
    reading: str = "permuted",
    repeats: int = 10,
    groups: Tensor | None = None,
    T: float = 1.0,
    seed: int = 0,
    items: int | None = None,
) -> Saliency:
    """The plain loop of Algorithm 1: one perturbed input and one forward per item and repeat.

    Same permutations as :func:`compute_saliency` (they agree to rounding); NCJSD from
    :func:`ntdh_bench.divergence.decoupled_jsd`. Classification outputs only. ``items`` scores
    only the first ``items`` items (the benchmark times a slice).
    """
    model.eval()
    flat = xa.flatten(1)
    index, valid = item_index(groups, flat.shape[1])
    members = [index[i][valid[i]].to(xa.device) for i in range(index.shape[0])]
    if items is not None:
        members = members[:items]
    perms = permutations(xa.shape[0], repeats, seed).to(xa.device)

    def ncjsd(x: Tensor) -> float:
        return float(decoupled_jsd(model(x).logits, reference_logits, target, T)[1].mean())

    base = ncjsd(xa)
    rounds = len(perms) if reading == "permuted" else 1
    perturbed = torch.empty(len(members), rounds)
    for i, cols in enumerate(members):
        for r in range(rounds):
            x = flat.clone()
            x[:, cols] = flat[perms[r].unsqueeze(1), cols] if reading == "permuted" else 0.0
            perturbed[i, r] = ncjsd(x.view_as(xa))
    return Saliency(reading, perturbed, base, groups=groups)
