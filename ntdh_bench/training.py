"""The lean Lightning trainer profile for sweeps of many small runs, and fit-then-test.

A sweep shows one progress bar over all its runs; each run's Trainer has no progress bar, no
model summary, no sanity-check steps and no per-step logging, and Lightning's informational
chatter is silenced while it runs. Metrics go to TensorBoard per epoch, fit and test of a run
into one event file (:class:`RunLogger`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor, nn

from ntdh_bench.checkpointing import EpochCheckpoint, remove_checkpoint, resumable_checkpoint
from ntdh_bench.guards import FiniteLossGuard, default_guards
from ntdh_bench.module import UnimodalModule

__all__ = ["FiniteLossGuard"]  # re-exported: it lives in ntdh_bench.guards

_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
_EXPECTED_WARNINGS = (
    r".*module\(s\) in eval mode.*",  # the frozen teacher, by design
    r".*does not have many workers.*",  # tensor fast path: no workers, by design
    r".*smaller than the logging interval.*",  # we log per epoch
    r".*isinstance\(treespec, LeafSpec\).*",  # a torch / lightning version mismatch notice
)


@dataclass
class DeviceConfig:
    """Where runs execute: ``gpus = 0`` is the CPU; ``strategy`` e.g. ``"ddp"``.

    ``cpu_processes > 1`` runs DDP on the CPU (gloo): how the tests exercise the distributed
    path on machines without a GPU.
    """

    gpus: int = 0
    cpu_processes: int = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def distributed(self) -> bool:
        """Whether each run spans several processes (DDP), which must act in step."""
        return (
            self.strategy != "auto" or self.cpu_processes > 1 or self.gpus > 1 or self.num_nodes > 1
        )

    def trainer_kwargs(self) -> dict[str, Any]:
        if self.gpus > 0:
            kwargs: dict[str, Any] = {"accelerator": "gpu", "devices": self.gpus}
        else:
            kwargs = {"accelerator": "cpu", "devices": self.cpu_processes}
        kwargs.update(strategy=self.strategy, num_nodes=self.num_nodes)
        if self.precision:
            kwargs["precision"] = self.precision
        return {**kwargs, **self.extra}


@dataclass
class RunEnv:
    """Where a run writes (TensorBoard logs, the cache) and on which devices."""

    runs_dir: Path = Path("runs")
    cache_dir: Path = Path("cache")
    devices: DeviceConfig = field(default_factory=DeviceConfig)
    experiment: str = "adhoc"
    checkpoint_interval_s: float = 60.0  # epoch-end resume checkpoints, at most this often


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


class RunLogger(TensorBoardLogger):
    """TensorBoard logger of one run: fit, test and the hparams share one event file.

    Lightning finalizes loggers after ``fit``, which would close the writer and start a new
    event file for ``test``; here finalizing only flushes, and :meth:`close` ends the file.

    Lightning also calls :meth:`save` (a flush that waits for the writer thread, plus a check
    for ``hparams.yaml``) after every logged epoch; for runs of many one-batch epochs that is
    a tenth of the run. Here it happens at most every ``save_every_s`` seconds; the end of fit,
    of test and of the run always flush.
    """

    save_every_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_save = -math.inf

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Scalars logged together become one event with a value per tag (readers see the same
        points as from one ``add_scalar`` each, at a third of the cost: a run of 1000 one-batch
        epochs logs four values each epoch); anything else goes the usual way."""
        values = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        scalars = {k: _scalar(v) for k, v in values.items()}
        if step is None or any(v is None for v in scalars.values()):
            super().log_metrics(metrics, step)
            return
        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()])
        self.experiment._get_file_writer().add_summary(summary, step, time.time())

    def save(self) -> None:
        now = time.monotonic()
        if now - self._last_save < self.save_every_s:
            return
        self._last_save = now
        super().save()

    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self.experiment.flush()

    def close(self) -> None:
        self._last_save = -math.inf  # the final save always writes
        super().finalize("success")


def _scalar(value: Any) -> float | None:
    """``value`` as a float when it is one number (a 0-dim tensor, an int, a float)."""
    if isinstance(value, Tensor):
        return float(value) if value.numel() == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def make_trainer(
    max_epochs: int,
    devices: DeviceConfig,
    log_dir: str | Path | None = None,
    name: str = "",
    version: str | None = None,
    callbacks: list[L.Callback] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_interval_s: float = 60.0,
    val_every: int = 1,
    **overrides: Any,
) -> L.Trainer:
    """A Trainer in the lean sweep profile; TensorBoard under ``log_dir/name/version``.

    With ``checkpoint_dir``, epoch-end checkpoints (at most one per ``checkpoint_interval_s``)
    make the run resumable, see :mod:`ntdh_bench.checkpointing`.
    """
    logger: TensorBoardLogger | bool = False
    if log_dir is not None:
        logger = RunLogger(
            save_dir=str(log_dir), name=name, version=version, default_hp_metric=False
        )
    all_callbacks = [*default_guards(), *(callbacks or [])]
    if checkpoint_dir is not None:
        all_callbacks.append(EpochCheckpoint(checkpoint_dir, checkpoint_interval_s))
    kwargs: dict[str, Any] = dict(
        max_epochs=max_epochs,
        logger=logger,
        callbacks=all_callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=val_every,
        log_every_n_steps=50,
        deterministic=False,
        **devices.trainer_kwargs(),
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def fit_and_test(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    checkpoint_dir: str | Path | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Train (resuming from ``checkpoint_dir`` when it holds a checkpoint), then test.

    Returns ``(test_metrics, timing)``. No checkpoint is selected on validation data: the
    suite reports the last epoch's weights. The resume checkpoint is removed once the run
    has finished.
    """
    resume = resumable_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    fit_s = time.perf_counter() - start
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    test_s = time.perf_counter() - start - fit_s
    if checkpoint_dir is not None and trainer.is_global_zero:
        remove_checkpoint(checkpoint_dir)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    timing = {"fit_s": fit_s, "test_s": test_s}
    if resume is not None:
        timing["resumed"] = 1.0
    return metrics, timing


def log_hparams(
    trainer: L.Trainer, config: Mapping[str, Any], metrics: Mapping[str, float]
) -> None:
    """Put the run's config with its final metrics in TensorBoard's hparams table; closes
    the run's event file."""
    close_with_hparams(trainer.logger, config, metrics)


def close_with_hparams(
    logger: Any, config: Mapping[str, Any], metrics: Mapping[str, float]
) -> None:
    """Write ``config`` with ``metrics`` to a TensorBoard logger's hparams table and close its
    event file (a run trained by a Trainer, or a member of an ensemble); other loggers: none."""
    if isinstance(logger, TensorBoardLogger):
        logger.log_hyperparams(flatten_config(config), metrics=dict(metrics))
        if isinstance(logger, RunLogger):
            logger.close()
        else:
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


def train_unimodal(
    network: nn.Module,
    dm: L.LightningDataModule,
    modality: str,
    train: Mapping[str, Any],
    env: RunEnv,
    name: str,
    version: str,
    callbacks: Sequence[L.Callback] = (),
) -> tuple[UnimodalModule, dict[str, float], dict[str, float], L.Trainer]:
    """Train ``network`` on ``modality`` with cross-entropy (a teacher, or Table I's strength),
    logging to ``<runs_dir>/<name>/<version>``; resumable from its checkpoint folder there."""
    module = UnimodalModule(
        network,
        dm.num_classes,
        modality=modality,
        task=dm.task,
        lr=train["lr"],
        weight_decay=train["weight_decay"],
        optimizer=train["optimizer"],
        momentum=train["momentum"],
    )
    checkpoints = Path(env.runs_dir) / name / version / "checkpoints"
    trainer = make_trainer(
        train["epochs"],
        env.devices,
        env.runs_dir,
        name,
        version,
        val_every=train["val_every"],
        callbacks=list(callbacks),
        checkpoint_dir=checkpoints,
        checkpoint_interval_s=env.checkpoint_interval_s,
    )
    metrics, timing = fit_and_test(trainer, module, dm, checkpoints)
    return module, metrics, timing, trainer
