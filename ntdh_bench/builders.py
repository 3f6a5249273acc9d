"""Objects from a resolved run config: its datamodule and its networks.

Teacher and student share one architecture class, sized by each modality's input shape (the
paper's Assumption 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from datamodules import PairedDataModule, build_datamodule
from models import build_model


def build_run_datamodule(config: Mapping[str, Any]) -> PairedDataModule:
    """The run's datamodule, seeded by the run's seed (batch order)."""
    args = {k: v for k, v in config["dataset"].items() if k != "name"}
    return build_datamodule(config["dataset"]["name"], seed=config["seed"], **args)


def build_network(config: Mapping[str, Any], dm: PairedDataModule, modality: str) -> nn.Module:
    """A fresh network of the run's architecture for ``modality`` (``xa`` or ``xb``)."""
    if modality not in ("xa", "xb"):
        raise ValueError(f"modality must be 'xa' or 'xb', got {modality!r}")
    shape_a, shape_b = dm.input_shapes()
    args = {k: v for k, v in config["model"].items() if k != "name"}
    shape = shape_a if modality == "xa" else shape_b
    return build_model(config["model"]["name"], shape, dm.num_classes, **args)
