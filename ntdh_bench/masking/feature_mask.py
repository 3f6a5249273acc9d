"""Masks on the teacher's features: which to zero (:func:`feature_keep_mask`) and the network
that zeroes them (:class:`MaskedNetwork`).

Input features are zero in the teacher's input; hidden channels are zero at the output of one
layer. Hidden channels have no identity across separately trained networks, so a hidden-layer
mask belongs on the very network it was scored on (the Eq. 26-trained ``f_a``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from models.base import ModelOutput
from ntdh_bench.masking.saliency import Saliency
from ntdh_bench.masking.selection import MASK_KINDS, ORACLE_KINDS, select_masked


class MaskedNetwork(nn.Module):
    """A network whose input features (or one hidden layer's channels) are masked to zero.

    ``keep`` is 1 for kept and 0 for masked entries, shaped like one input sample or
    ``(channels,)`` of ``layer``; it is a buffer, saved with the weights.
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
) -> Tensor:
    """The ``keep`` tensor (1 kept, 0 masked) of a ``true`` / ``false`` / ``random`` mask.

    ``shape`` is one input sample's shape (or ``(channels,)`` for a hidden layer); items are
    single features or the groups of ``groups``; ``mask_count(ratio, items)`` items are masked,
    ranked by ``saliency.score``.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"feature mask kind must be one of {MASK_KINDS}, got {kind!r}")
    n_features = math.prod(shape)
    if groups is None and saliency is not None:
        groups = saliency.groups
    n_items = n_features if groups is None else int(groups.max()) + 1
    scores = None
    if kind != "random":
        if saliency is None:
            raise ValueError(f"a {kind!r} feature mask needs a saliency")
        scores = saliency.score
        if scores.numel() != n_items:
            raise ValueError(f"saliency scores {scores.numel()} items, the mask has {n_items}")
    generator = torch.Generator().manual_seed(seed)
    masked_items = select_masked(scores, kind, ratio, n=n_items, generator=generator)
    masked = masked_items if groups is None else masked_items[groups.flatten().long()]
    return (~masked).float().view(*shape)


def oracle_keep_mask(kind: str, shape: Sequence[int], sets: Mapping[str, Tensor]) -> Tensor:
    """The ``keep`` tensor of an oracle mask: exactly the known set of input features.

    ``sets`` comes from the datamodule (``oracle_feature_sets()``, synthetic data only):
    ``specific`` the teacher-only decisive columns, ``shared`` the ones both modalities carry.
    """
    if kind not in ORACLE_KINDS:
        raise ValueError(f"oracle mask kind must be one of {ORACLE_KINDS}, got {kind!r}")
    columns = sets[kind.removeprefix("oracle_")]
    keep = torch.ones(math.prod(shape))
    keep[columns.long()] = 0.0
    return keep.view(*shape)
