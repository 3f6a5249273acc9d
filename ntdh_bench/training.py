"""The lean Lightning trainer profile for sweeps of many small runs, and fit-then-test.

A sweep shows one progress bar over all its runs; each run's Trainer has no progress bar, no
model summary, no sanity-check steps and no per-step logging, and Lightning's informational
chatter is silenced while it runs. Metrics go to TensorBoard per epoch.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
_EXPECTED_WARNINGS = (
    r".*module\(s\) in eval mode.*",  # the frozen teacher, by design
    r".*does not have many workers.*",  # tensor fast path: no workers, by design
    r".*smaller than the logging interval.*",  # we log per epoch
    r".*isinstance\(treespec, LeafSpec\).*",  # a torch / lightning version mismatch notice
)


@dataclass
class DeviceConfig:
    """Where runs execute: ``gpus = 0`` is the CPU; ``strategy`` e.g. ``"ddp"``."""

    gpus: int = 0
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def trainer_kwargs(self) -> dict[str, Any]:
        if self.gpus > 0:
            kwargs: dict[str, Any] = {"accelerator": "gpu", "devices": self.gpus}
        else:
            kwargs = {"accelerator": "cpu", "devices": 1}
        kwargs.update(strategy=self.strategy, num_nodes=self.num_nodes)
        if self.precision:
            kwargs["precision"] = self.precision
        return {**kwargs, **self.extra}


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-run info logs and the warnings this suite expects."""
    previous = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for name, level in previous.items():
                logging.getLogger(name).setLevel(level)


def make_trainer(
    max_epochs: int,
    devices: DeviceConfig,
    log_dir: str | Path | None = None,
    name: str = "",
    version: str | None = None,
    callbacks: list[L.Callback] | None = None,
    **overrides: Any,
) -> L.Trainer:
    """A Trainer in the lean sweep profile; TensorBoard under ``log_dir/name/version``."""
    logger: TensorBoardLogger | bool = False
    if log_dir is not None:
        logger = TensorBoardLogger(
            save_dir=str(log_dir), name=name, version=version, default_hp_metric=False
        )
    kwargs: dict[str, Any] = dict(
        max_epochs=max_epochs,
        logger=logger,
        callbacks=callbacks or [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
        deterministic=False,
        **devices.trainer_kwargs(),
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def fit_and_test(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule
) -> tuple[dict[str, float], dict[str, float]]:
    """Train, then test the last epoch's weights; return ``(test_metrics, timing)``.

    No checkpoint is selected on validation data: the suite reports the last epoch.
    """
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    test_s = time.perf_counter() - start - fit_s
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    return metrics, {"fit_s": fit_s, "test_s": test_s}


def log_hparams(
    trainer: L.Trainer, config: Mapping[str, Any], metrics: Mapping[str, float]
) -> None:
    """Put the run's config with its final metrics in TensorBoard's hparams table."""
    logger = trainer.logger
    if isinstance(logger, TensorBoardLogger):
        logger.log_hyperparams(flatten_config(config), metrics=dict(metrics))
        logger.finalize("success")


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists become strings (TensorBoard takes scalars)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, name + "."))
        elif isinstance(value, list | tuple) or value is None:
            flat[name] = str(value)
        else:
            flat[name] = value
    return flat
