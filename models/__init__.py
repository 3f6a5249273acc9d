"""Architectures of the suite; all return :class:`models.base.ModelOutput`.

``MODELS`` maps a name used in configs to its class;
``build_model(name, input_shape, num_classes, **kwargs)`` builds one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from models.base import ModelOutput
from models.cnn2d import CNN2d
from models.mlp import MLP
from models.pmf import PMFLight, PMFStream
from models.point_branch import PointImageBranch
from models.ssc import SSCNet

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn2d": CNN2d,
    "pmf": PMFStream,
    "pmf_light": PMFLight,
    "point_branch": PointImageBranch,
    "ssc": SSCNet,
}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any
) -> nn.Module:
    """Build architecture ``name`` sized for one sample of ``input_shape``.

    Every registered class provides ``from_shape(input_shape, num_classes, **kwargs)``, so
    that teacher and student share one class and differ only where their inputs force it
    (the paper's Assumption 1).
    """
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(MODELS)}") from None
    return cls.from_shape(tuple(input_shape), num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (Table I's model capacity)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "MLP",
    "MODELS",
    "CNN2d",
    "ModelOutput",
    "PMFLight",
    "PMFStream",
    "PointImageBranch",
    "SSCNet",
    "build_model",
    "count_parameters",
]
