"""Algorithm 1, steps 5-13: score each item of ``xa`` by the NCJSD it leaves or removes.

Two readings, both on the Eq. 26-trained ``f_a`` against the trained ``f_b``'s outputs:

* ``permuted`` (the paper's Algorithm 1, the default): permute item ``i`` across samples ``M``
  times; ``p_i = mean_M NCJSD(f_a(x~a), f_b(xb))``, ``score = p / max p``. ``true`` masks the
  items whose permutation gives the largest NCJSD.
* ``ablation``: zero item ``i`` once; ``score = NCJSD(base) - NCJSD(zeroed_i)``. ``true`` masks
  the items whose removal lowers the divergence most, the items that *carry* it.

Items are single input features, groups of them (:func:`patch_groups`), or the channels of a
hidden layer (``layer=``). One engine serves both readings: each perturbation is a
replacement of the site's values (permuted rows, or zeros), and the perturbed copies, all
(item, repeat) pairs together, go through the network in batched forwards, in chunks bounded
by ``max_chunk_bytes``. When the network's first operation is an ``nn.Linear`` on the flattened
input (every MLP), a copy differs from the original by a rank-``g`` update of that layer's
output, ``W x~ + b = (W x + b) + W[:, G] (x~[G] - x[G])``, so copies enter after the first layer
(checked against a direct forward once per call); for an :class:`~models.mlp.MLP` the rest runs
as plain matrix products that leave the logits classes first, the layout the NCJSD
(:mod:`.ncjsd`) reads fastest. An item whose perturbation leaves every sample as it was (a
constant column permuted, a zero column zeroed) is not run: it scores the base NCJSD exactly,
as in the loop, so such items tie exactly (and the masks' stable sort keeps them in item order).
:func:`saliency_loop` is the plain one-item-at-a-time loop the engine must agree with (to 1e-6,
tested).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.mlp import MLP
from ntdh_bench.divergence import decoupled_jsd, dense_keep_mask
from ntdh_bench.masking.ncjsd import NontargetReference

log = logging.getLogger(__name__)

SCORE_READINGS = ("permuted", "ablation")


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

    def classes_first(self, logits: Tensor) -> Tensor:
        """Mean NCJSD per copy of ``(C, K, n)`` logits (classification outputs only)."""
        return self.ref.ncjsd_classes_first(logits).mean(dim=-1)


class _MLPTail:
    """An :class:`~models.mlp.MLP` after its first layer, fed that layer's outputs ``(..., h)``
    (overwritten) and returning the logits classes first, ``(C, ...)``: the copies' forward
    as plain matrix products, the last one transposed so that the NCJSD reads long rows."""

    def __init__(self, model: MLP) -> None:
        self.hidden = list(model.hidden)[1:]
        self.head = model.head

    def __call__(self, pre: Tensor) -> Tensor:
        h = pre.view(-1, pre.shape[-1]).relu_()
        for layer in self.hidden:
            h = _affine(layer, h).relu_()
        w, b = self.head.weight, self.head.bias
        z = torch.mm(w, h.t()) if b is None else torch.addmm(b.unsqueeze(1), w, h.t())
        return z.view(-1, *pre.shape[:-1])


def _affine(layer: nn.Linear, h: Tensor) -> Tensor:
    w = layer.weight.t()
    return torch.mm(h, w) if layer.bias is None else torch.addmm(layer.bias, h, w)


def _mlp_tail(model: nn.Module, first: nn.Module, x: Tensor) -> _MLPTail | None:
    """The tail of ``model`` when it is a plain MLP whose first layer is ``first`` (checked
    against a direct forward); None otherwise (the copies then run through ``model``)."""
    if type(model).forward is not MLP.forward or not model.hidden or first is not model.hidden[0]:
        return None  # (an MLP without hidden layers is one linear layer: nothing to run)
    tail = _MLPTail(model)
    probe = x[:2].flatten(1)
    if not _same_logits(tail(first(probe).unsqueeze(0))[:, 0].t(), model(x[:2]).logits):
        log.warning("saliency: the MLP tail disagrees with a direct forward")
        return None
    return tail


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
    max_chunk_bytes: int = 2**23,
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
    tail = _mlp_tail(model, site, xa) if shortcut and reference_logits.dim() == 2 else None
    if shortcut:
        weight = site.weight.t()  # (F, h)
        base_pre = site(base_site)
        site_elems = base_pre.shape[1]
    else:
        site_elems = math.prod(base_site.shape[1:])

    # changed[r]: the site's values under perturbation r; at the shortcut, x~ - x features first
    if shortcut:
        cols = base_site.t().contiguous()  # (F, n)
        if perms is not None:
            shape = (perms.shape[0], *cols.shape)  # (R, F, n)
            moved = perms.unsqueeze(1).expand(shape)
            changed = torch.gather(cols.expand(shape), 2, moved).sub_(cols)
        else:
            changed = cols.neg().unsqueeze(0)
        still = changed.abs().amax(dim=2) == 0
    else:
        if perms is not None:
            changed = torch.stack([base_site[p] for p in perms])
        else:
            changed = torch.zeros_like(base_site).unsqueeze(0)
        still = (changed == base_site).transpose(1, 2).flatten(2).all(dim=2)  # (R, feats)

    def stack_for(items: Tensor, reps: Tensor) -> Tensor:
        """``(k, n, ...)`` copies of the site's output: copy ``j`` has item ``items[j]`` under
        perturbation ``reps[j]``."""
        index_, valid_ = index[items], valid_items[items]
        if shortcut:
            if index_.shape[1] == 1:
                f = index_[:, 0]
                delta = changed[reps, f].unsqueeze(2)  # (k, n, 1)
                return torch.addcmul(base_pre, delta, weight[f].unsqueeze(1))
            w = weight[index_] * valid_.to(weight.dtype).unsqueeze(2)  # (k, g, h)
            delta = changed[reps.unsqueeze(1), index_]  # (k, g, n)
            return base_pre + torch.bmm(delta.transpose(1, 2), w)
        member = torch.zeros(index_.shape[0], feats, dtype=torch.bool, device=device)
        member.scatter_(1, index_, valid_)
        member = member.view(index_.shape[0], 1, feats, *([1] * (base_site.dim() - 2)))
        return torch.where(member, changed[reps], base_site.unsqueeze(0))

    def score(stack: Tensor) -> Tensor:
        if tail is not None:
            return scorer.classes_first(tail(stack))
        rows = stack.reshape(-1, *stack.shape[2:])
        if site is None:
            return scorer(model(rows.view(-1, *xa.shape[1:])).logits)
        return scorer(_with_output(model, site, probe, rows))

    base = float(scorer(base_logits).mean())
    index, valid_items = item_index(groups, feats)
    index, valid_items = index.to(device), valid_items.to(device)
    n_items, rounds = index.shape[0], changed.shape[0]
    # an item whose perturbation leaves every sample's values as they were scores ``base``
    # exactly (see the module doc); the rest, (item, repeat) pairs together, go in chunks
    item_still = (still[:, index] | ~valid_items).all(dim=2).t()  # (I, R)
    todo = torch.nonzero(~item_still.flatten()).squeeze(1)
    perturbed = torch.full((n_items * rounds,), base)
    row_bytes = 4 * (2 * site_elems + 4 * max(out_elems, c))
    per_chunk = max(1, max_chunk_bytes // max(1, row_bytes * n))
    for start in range(0, todo.numel(), per_chunk):
        copies = todo[start : start + per_chunk]
        stack = stack_for(copies // rounds, copies % rounds)
        perturbed[copies.cpu()] = score(stack).float().cpu()
    return Saliency(reading, perturbed.view(n_items, rounds), base, groups=groups, layer=layer)


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
