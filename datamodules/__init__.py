"""One LightningDataModule per dataset, all yielding the batch dict of ``base.py``.

``DATAMODULES`` maps a dataset name used in configs and on the command line to its class.
"""

from __future__ import annotations

from typing import Any

from datamodules.base import IGNORE_INDEX, PairedDataModule, TensorBatchLoader
from datamodules.mnist_m import DigitsDataModule, MNISTMDataModule
from datamodules.nyu_depth import NYUDepthDataModule
from datamodules.nyu_ssc import NYUSSCDataModule
from datamodules.ravdess import RavdessDataModule
from datamodules.semantic_kitti import SemanticKittiDataModule
from datamodules.synthetic import SyntheticDataModule

DATAMODULES: dict[str, type[PairedDataModule]] = {
    "synthetic": SyntheticDataModule,
    "mnist_m": MNISTMDataModule,
    "digits": DigitsDataModule,
    "ravdess": RavdessDataModule,
    "nyu_ssc": NYUSSCDataModule,
    "nyu_depth": NYUDepthDataModule,
    "semantic_kitti": SemanticKittiDataModule,
}


def build_datamodule(name: str, **overrides: Any) -> PairedDataModule:
    """Build the datamodule registered as ``name`` with ``overrides`` as arguments."""
    try:
        cls = DATAMODULES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; registered: {sorted(DATAMODULES)}") from None
    return cls(**overrides)


__all__ = [
    "DATAMODULES",
    "IGNORE_INDEX",
    "DigitsDataModule",
    "MNISTMDataModule",
    "NYUDepthDataModule",
    "NYUSSCDataModule",
    "PairedDataModule",
    "RavdessDataModule",
    "SemanticKittiDataModule",
    "SyntheticDataModule",
    "TensorBatchLoader",
    "build_datamodule",
]
