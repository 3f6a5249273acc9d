"""Execute one run from its config: a teacher, a unimodal network, or a student.

* ``teacher``: trains the teacher on ``xa`` (or finds it in the cache); reports its metrics.
* ``unimodal``: one network on one modality alone (Table I's modality strength).
* ``student``: the no-KD baseline, cross-entropy only; its divergences to the teacher are
  still measured.
* ``kd``: the student distilled from the frozen teacher, with the run's masks as callbacks.

Student runs also report the extra metrics their datamodule names in ``extra_metrics`` (e.g.
NYU SSC's scene-completion scores), through the callbacks of :mod:`ntdh_bench.extra_metrics`.

The config is resolved once (:func:`ntdh_bench.config.resolve_run_config`), the datamodule
built once, and the teacher prepared by :mod:`ntdh_bench.teachers`. Student runs return their
per-epoch validation curves as ``history/<metric>/<epoch>`` metrics.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

from datamodules import PairedDataModule
from datamodules.base import data_warning_counts, reset_data_warnings
from ntdh_bench.builders import build_network, build_run_datamodule
from ntdh_bench.callbacks import DivergenceMonitor, MetricHistory, SampleMask
from ntdh_bench.config import resolve_run_config
from ntdh_bench.distillers import build_distiller
from ntdh_bench.extra_metrics import metric_callbacks
from ntdh_bench.module import CrossModalKD
from ntdh_bench.naming import run_folder_name
from ntdh_bench.results import config_hash
from ntdh_bench.teachers import PreparedTeacher, prepare_teacher
from ntdh_bench.training import (
    RunEnv,
    fit_and_test,
    log_hparams,
    make_trainer,
    quiet_lightning,
    train_unimodal,
)

__all__ = ["RunEnv", "RunResult", "execute_run", "run_datamodule"]

# In-memory datamodules of this process's recent runs, by dataset section and seed: a sweep's
# worker runs the teacher, the no-KD student and the KD students of one cell one after another
# (or, in ensembles, every cell's teachers, then every cell's students), and rebuilding the data
# (scikit-learn's generator, the digits' blends) costs each of them. The most recent are kept,
# at most _DATAMODULES_KEPT and _DATAMODULES_BYTES of tensors in all (the last one always).
_DATAMODULES: OrderedDict[str, PairedDataModule] = OrderedDict()
_DATAMODULES_KEPT = 64
_DATAMODULES_BYTES = 1 << 30


def run_datamodule(config: Mapping[str, Any]) -> PairedDataModule:
    """The run's datamodule, reused from a recent run of this process with the same data,
    seed and data environment (cache, strictness) when it keeps its splits in memory and its
    building reported no data problem (so every run records its own data warnings).
    File-backed datamodules are built afresh."""
    environment = {k: os.environ.get(k) for k in ("NTDH_CACHE", "NTDH_STRICT", "NTDH_DATA")}
    key = json.dumps(
        {"dataset": config["dataset"], "seed": config["seed"], "env": environment},
        sort_keys=True,
    )
    dm = _DATAMODULES.get(key)
    if dm is not None:
        _DATAMODULES.move_to_end(key)
        dm.trainer = None  # the last run's trainer (and its device) is not this run's
        return dm
    dm = build_run_datamodule(config)
    if dm.uses_tensor_path and not data_warning_counts():
        _DATAMODULES[key] = dm
        while len(_DATAMODULES) > 1 and (
            len(_DATAMODULES) > _DATAMODULES_KEPT
            or sum(map(_tensor_bytes, _DATAMODULES.values())) > _DATAMODULES_BYTES
        ):
            _DATAMODULES.popitem(last=False)
    return dm


def _tensor_bytes(dm: PairedDataModule) -> int:
    """The memory of a datamodule's split tensors."""
    return sum(
        t.numel() * t.element_size()
        for split in ("train", "val", "test")
        for t in _split_or_empty(dm, split).values()
    )


def _split_or_empty(dm: PairedDataModule, split: str) -> Mapping[str, Any]:
    try:
        return dm.split_tensors(split)
    except KeyError:
        return {}


@dataclass
class RunResult:
    metrics: dict[str, float]
    timing: dict[str, float]


def execute_run(config: Mapping[str, Any], env: RunEnv, run_id: str | None = None) -> RunResult:
    """Run one config to completion and return its test metrics and timing."""
    config = resolve_run_config(config)
    run_id = run_id or config_hash(config)
    folder = run_folder_name(config, run_id)
    reset_data_warnings()  # the counts below are this run's (data/<problem> in its metrics)
    with quiet_lightning():
        dm = run_datamodule(config)
        if config["role"] == "unimodal":
            L.seed_everything(config["seed"], workers=True, verbose=False)
            network = build_network(config, dm, config["modality"])
            _, metrics, timing, trainer = train_unimodal(
                network,
                dm,
                config["modality"],
                config["teacher"],
                env,
                env.experiment,
                folder,
                metric_callbacks(dm),  # Table I scores SSC by SSC mIoU, as the paper does
            )
            log_hparams(trainer, config, metrics)
            result = RunResult(metrics, timing)
        else:
            teacher = prepare_teacher(config, dm, env)
            if config["role"] == "teacher":
                result = RunResult({f"teacher/{k}": v for k, v in teacher.metrics.items()}, {})
            else:
                result = _train_student(config, dm, env, folder, teacher)
    result.metrics.update({f"data/{k}": float(v) for k, v in data_warning_counts().items()})
    return result


def _train_student(
    config: Mapping[str, Any],
    dm: PairedDataModule,
    env: RunEnv,
    folder: str,
    teacher: PreparedTeacher,
) -> RunResult:
    train = config["student"]
    L.seed_everything(config["seed"], workers=True, verbose=False)
    student = build_network(config, dm, "xb")
    distiller = None
    if config["role"] == "kd":
        options = {k: v for k, v in config["distiller"].items() if k != "name"}
        distiller = build_distiller(config["distiller"]["name"], task=dm.task, **options)
    module = CrossModalKD(
        student,
        teacher.network,
        distiller,
        dm.num_classes,
        lam=train["lam"] if distiller else 0.0,
        ce_weight=train["ce_weight"] if distiller else None,
        task=dm.task,
        lr=train["lr"],
        weight_decay=train["weight_decay"],
        optimizer=train["optimizer"],
        momentum=train["momentum"],
    )
    history = MetricHistory()
    callbacks = [*teacher.callbacks, DivergenceMonitor(train["monitor_T"]), history]
    callbacks += metric_callbacks(dm)  # the metrics the data asks for (SSC's scores)
    if config.get("sample_mask"):
        callbacks.append(SampleMask(**config["sample_mask"]))
    checkpoints = Path(env.runs_dir) / env.experiment / folder / "checkpoints"
    trainer = make_trainer(
        train["epochs"],
        env.devices,
        env.runs_dir,
        env.experiment,
        folder,
        val_every=train["val_every"],
        callbacks=callbacks,
        checkpoint_dir=checkpoints,
        checkpoint_interval_s=env.checkpoint_interval_s,
    )
    metrics, timing = fit_and_test(trainer, module, dm, checkpoints)
    metrics.update({f"teacher/{k}": v for k, v in teacher.metrics.items()})
    log_hparams(trainer, config, metrics)
    metrics.update(history.as_metrics())  # per-epoch curves, for figures over training
    return RunResult(metrics, timing)
