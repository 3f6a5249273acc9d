"""Shared fixtures: tiny synthetic data and a lean trainer, so module tests run in seconds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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


ROOT = Path(__file__).resolve().parent.parent

# Overrides that shrink the synthetic experiments to seconds (schedules and data size).
TINY_SYNTHETIC = (
    "--set", "teacher.epochs=2", "--set", "student.epochs=2",
    "--set", "dataset.n_samples=600", "--set", "dataset.n_train=400",
)  # fmt: skip


@pytest.fixture
def tiny_args() -> list[str]:
    """Command-line overrides that shrink a synthetic experiment to seconds."""
    return list(TINY_SYNTHETIC)


def output_dirs(root: Path) -> list[str]:
    return [
        "--results-dir", str(root / "results"), "--runs-dir", str(root / "runs"),
        "--cache-dir", str(root / "cache"),
    ]  # fmt: skip


@pytest.fixture
def dirs_under() -> Callable[[Path], list[str]]:
    """``dirs_under(root)``: the results / runs / cache flags for an experiment under root."""
    return output_dirs


@pytest.fixture
def out_dirs(tmp_path) -> list[str]:
    """The results / runs / cache flags for an experiment under ``tmp_path``."""
    return output_dirs(tmp_path)
