"""Shared fixtures: tiny synthetic data and a lean trainer, so module tests run in seconds."""

from __future__ import annotations

import lightning as L
import pytest

from datamodules import SyntheticDataModule
from ntdh_bench.training import DeviceConfig, make_trainer


@pytest.fixture
def tiny_synthetic() -> SyntheticDataModule:
    return SyntheticDataModule(gap=0.5, n_samples=600, n_train=400, batch_size=64)


@pytest.fixture
def lean_trainer(tmp_path):
    def build(max_epochs: int = 2, log: bool = False, **overrides) -> L.Trainer:
        return make_trainer(
            max_epochs,
            DeviceConfig(),
            log_dir=tmp_path / "runs" if log else None,
            name="test",
            version="v0",
            **overrides,
        )

    return build
