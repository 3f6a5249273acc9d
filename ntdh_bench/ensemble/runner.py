"""Execute a group of runs as one vectorised ensemble, each member recorded as if run alone.

:func:`execute_ensemble` is the ensemble counterpart of :func:`ntdh_bench.runner.execute_run`:
the same configs in, one :class:`~ntdh_bench.runner.RunResult` (or the exception that failed
that member) out per run, with the same metrics a run alone returns (test metrics, the
teacher's, ``history/...`` curves, ``data/...`` warnings), the same TensorBoard folder per run
and, for teachers, the same cache entry, so that every later run (alone or in an ensemble)
reads it. Members are built exactly as alone: ``seed_everything(seed)`` then the network, the
datamodule of the run's own data cell, the teacher's outputs in the same chunks.

The ensemble itself checkpoints at epoch ends under ``<runs>/<experiment>/ensembles/<hash>`` and
resumes from there when the same group is run again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from datamodules import PairedDataModule
from datamodules.base import data_warning_counts, reset_data_warnings
from models.base import ModelOutput
from ntdh_bench.builders import build_network
from ntdh_bench.cache import CacheEntry
from ntdh_bench.callbacks import FeatureMask
from ntdh_bench.checkpointing import remove_checkpoint, resumable_checkpoint
from ntdh_bench.config import resolve_run_config
from ntdh_bench.distillers import build_distiller
from ntdh_bench.ensemble.grouping import LOGIT_DISTILLERS, ensemble_key, ineligibility
from ntdh_bench.ensemble.module import EnsembleModule, StackedSplit
from ntdh_bench.masking.feature_mask import MaskedNetwork
from ntdh_bench.naming import run_folder_name
from ntdh_bench.results import config_hash
from ntdh_bench.runner import RunResult, execute_run, run_datamodule
from ntdh_bench.teachers import feature_keep, prepare_teacher, teacher_identity
from ntdh_bench.training import (
    RunEnv,
    RunLogger,
    close_with_hparams,
    make_trainer,
    quiet_lightning,
)

__all__ = ["MAX_MEMBER_PARAMETERS", "MemberOutcome", "execute_ensemble"]

# Above this size a member trains alone: stacked, the members' products and the optimizer's
# passes over their parameters outgrow the caches, and a step of K members costs more than K
# steps alone (digits' 784-1024-256 MLP, 1.07M parameters: 1.3x slower per member with a
# fused optimizer, 1.9x without). The synthetic MLPs (1.2k) gain 5-10x.
MAX_MEMBER_PARAMETERS = 200_000

MemberOutcome = RunResult | Exception
SPLITS = ("train", "val", "test")


class _Member:
    """One run of the ensemble: its config, data, network and where it logs."""

    def __init__(
        self, config: Mapping[str, Any], run_id: str, dm: PairedDataModule | None = None
    ) -> None:
        self.config, self.run_id = config, run_id
        if dm is None:
            reset_data_warnings()
            dm = run_datamodule(config)
            if not dm.uses_tensor_path:
                raise ValueError(f"dataset {config['dataset']['name']!r} is not held in memory")
        self.dm: PairedDataModule = dm
        self.data_warnings = {f"data/{k}": float(v) for k, v in data_warning_counts().items()}
        self.teacher_metrics: dict[str, float] = {}
        self.teacher: nn.Module | None = None
        self.network: nn.Module | None = None
        self.logger: RunLogger | None = None
        self.input_keep: torch.Tensor | None = None  # a teacher retrained on masked input

    def build_network(self, modality: str) -> None:
        L.seed_everything(self.config["seed"], workers=True, verbose=False)
        self.network = build_network(self.config, self.dm, modality)

    @torch.no_grad()
    def teacher_outputs(self, split: str) -> ModelOutput:
        """The teacher's outputs on a split, in the chunks a run alone computes them."""
        xa = self.dm.split_tensors(split)["xa"]
        chunk = self.dm.batch_size
        parts = [self.teacher(xa[s : s + chunk]) for s in range(0, len(xa), chunk)]
        return ModelOutput(
            logits=torch.cat([p.logits for p in parts]),
            features=[torch.cat(f) for f in zip(*(p.features for p in parts), strict=True)],
        )


def execute_ensemble(
    configs: Sequence[Mapping[str, Any]], env: RunEnv, run_ids: Sequence[str] | None = None
) -> list[MemberOutcome]:
    """Train ``configs`` (one ensemble key, see :mod:`ntdh_bench.ensemble.grouping`) together."""
    configs = [resolve_run_config(c) for c in configs]
    run_ids = list(run_ids) if run_ids is not None else [config_hash(c) for c in configs]
    for config in configs:
        reason = ineligibility(config)
        if reason is not None:
            raise ValueError(f"run {config_hash(config)} cannot join an ensemble: {reason}")
    if len({ensemble_key(c) for c in configs}) != 1:
        raise ValueError("an ensemble's runs must differ only in seed, data cell and teacher mask")
    with quiet_lightning():
        if _member_parameters(configs[0]) > MAX_MEMBER_PARAMETERS:
            return [_alone(c, env, i) for c, i in zip(configs, run_ids, strict=True)]
        members = [_Member(c, i) for c, i in zip(configs, run_ids, strict=True)]
        if configs[0]["role"] == "teacher":
            return _train_teachers(members, env)
        return _train_students(members, env)


def _member_parameters(config: Mapping[str, Any]) -> int:
    """How many parameters one member's network has."""
    dm = run_datamodule(config)
    modality = "xa" if config["role"] == "teacher" else "xb"
    return sum(p.numel() for p in build_network(config, dm, modality).parameters())


def _alone(config: Mapping[str, Any], env: RunEnv, run_id: str) -> MemberOutcome:
    """One run as :func:`~ntdh_bench.runner.execute_run` trains it (its failure returned)."""
    try:
        return execute_run(config, env, run_id)
    except Exception as exc:  # recorded as that run's failure, as a launcher would
        return exc


# --- teachers ------------------------------------------------------------------------------
def _retrain_keep(
    config: Mapping[str, Any], dm: PairedDataModule, env: RunEnv
) -> torch.Tensor | None:
    """The input mask a teacher is retrained under, or None for the plain teacher."""
    mask = config.get("feature_mask")
    if not mask or mask["teacher"] != "retrain":
        return None
    if mask["layer"] is not None:
        raise ValueError("a teacher retrained under a hidden-layer mask trains alone")
    return feature_keep(config, dm, env)


def _ensure_teachers(members: list[_Member], env: RunEnv) -> dict[str, MemberOutcome]:
    """Train together the teachers of ``members`` that the cache lacks (each once), and write
    each to the cache as a teacher trained alone is written; returns the outcomes of those
    trained here, by cache key. A teacher retrained on masked input trains on ``xa * keep``,
    the input :class:`~ntdh_bench.masking.MaskedNetwork` gives it, and is saved as one."""
    needed: dict[str, tuple[_Member, CacheEntry]] = {}
    for m in members:
        entry = CacheEntry(env.cache_dir, "teachers", teacher_identity(m.config))
        needed.setdefault(entry.key, (m, entry))
    trained: dict[str, MemberOutcome] = {}
    with contextlib.ExitStack() as locks:
        if not env.devices.distributed:
            for _, entry in needed.values():
                locks.enter_context(entry.lock())
        missing = [(m, e) for m, e in needed.values() if e.read("model.pt") is None]
        if not missing:
            return trained
        jobs = []
        for m, entry in missing:
            job = _Member(m.config, m.run_id, m.dm)
            job.input_keep = _retrain_keep(m.config, m.dm, env)
            job.build_network("xa")
            masked = "masked-" if job.input_keep is not None else ""
            job.logger = RunLogger(
                save_dir=str(env.runs_dir),
                name="teachers",
                version=f"teacher-{masked}s{m.config['seed']}-{entry.key}",
                default_hp_metric=False,
            )
            jobs.append(job)
        outcomes = _fit(jobs, env, "xa", jobs[0].config["teacher"], distiller=None)
        for job, (_, entry), outcome in zip(jobs, missing, outcomes, strict=True):
            trained[entry.key] = outcome
            if isinstance(outcome, Exception):
                continue
            metrics = {k: v for k, v in outcome.metrics.items() if k.startswith("test/")}
            close_with_hparams(job.logger, entry.identity, metrics)
            state = outcome.state
            if job.input_keep is not None:  # as MaskedNetwork(network, keep).state_dict()
                state = {**{f"net.{k}": v for k, v in state.items()}, "keep": job.input_keep}
            entry.write({"model.pt": state}, {"metrics": metrics, "timing": outcome.timing})
    return trained


def _train_teachers(members: list[_Member], env: RunEnv) -> list[MemberOutcome]:
    """Teacher runs: the missing ones train together; each then reports as alone (from the
    cache, through :func:`~ntdh_bench.teachers.prepare_teacher`)."""
    trained = _ensure_teachers(members, env)
    results: list[MemberOutcome] = []
    for m in members:
        key = CacheEntry(env.cache_dir, "teachers", teacher_identity(m.config)).key
        outcome = trained.get(key)
        if isinstance(outcome, Exception):
            results.append(outcome)
            continue
        teacher = prepare_teacher(m.config, m.dm, env)
        metrics = {f"teacher/{k}": v for k, v in teacher.metrics.items()}
        timing = {} if outcome is None else dict(outcome.timing)
        results.append(RunResult({**metrics, **m.data_warnings}, timing))
    return results


# --- students ------------------------------------------------------------------------------
def _train_students(members: list[_Member], env: RunEnv) -> list[MemberOutcome]:
    config = members[0].config
    distiller = None
    if config["role"] == "kd":
        options = {k: v for k, v in config["distiller"].items() if k != "name"}
        distiller = build_distiller(config["distiller"]["name"], task="classification", **options)
    _ensure_teachers([m for m in members if _trainable_teacher(m.config)], env)
    for m in members:
        teacher = prepare_teacher(m.config, m.dm, env)
        m.teacher, m.teacher_metrics = _masked(teacher.network, teacher.callbacks), teacher.metrics
    for m in members:
        m.build_network("xb")
        m.logger = RunLogger(
            save_dir=str(env.runs_dir),
            name=env.experiment,
            version=run_folder_name(m.config, m.run_id),
            default_hp_metric=False,
        )
    outcomes = _fit(members, env, "xb", config["student"], distiller)
    results: list[MemberOutcome] = []
    for m, outcome in zip(members, outcomes, strict=True):
        if isinstance(outcome, Exception):
            results.append(outcome)
            continue
        test = {k: v for k, v in outcome.metrics.items() if k.startswith("test/")}
        metrics = {**test, **{f"teacher/{k}": v for k, v in m.teacher_metrics.items()}}
        close_with_hparams(m.logger, m.config, metrics)
        history = {k: v for k, v in outcome.metrics.items() if k.startswith("history/")}
        results.append(RunResult({**metrics, **history, **m.data_warnings}, outcome.timing))
    return results


def _trainable_teacher(config: Mapping[str, Any]) -> bool:
    """Whether the run's teacher is a network trained on ``xa`` (plain, fed a mask, or
    retrained on masked input), which an ensemble can train; not Eq. 26's scored ``f_a``."""
    mask = config.get("feature_mask")
    return (
        not mask
        or mask["teacher"] == "feed"
        or (mask["teacher"] == "retrain" and mask["layer"] is None)
    )


def _masked(network: nn.Module, callbacks: Sequence[L.Callback]) -> nn.Module:
    """The teacher as a run alone distils from it: wrapped by its feature mask, as
    :class:`~ntdh_bench.callbacks.FeatureMask` wraps it in ``setup``."""
    for callback in callbacks:
        if not isinstance(callback, FeatureMask):
            raise ValueError(f"a teacher with a {type(callback).__name__} cannot serve an ensemble")
        network = MaskedNetwork(network, callback.keep, callback.layer).requires_grad_(False)
    return network.eval()


# --- the shared fit ------------------------------------------------------------------------
class _Trained(RunResult):
    """A member's metrics and timing, with its final weights."""

    def __init__(self, metrics: dict[str, float], timing: dict[str, float], state: dict) -> None:
        super().__init__(metrics, timing)
        self.state = state


def _stack(members: list[_Member], split: str, modality: str, features: bool) -> StackedSplit:
    """The members' split stacked; with teachers, their logits (and ``features`` when the
    distiller reads them; only on the training split, where it is called)."""
    tensors = [m.dm.split_tensors(split) for m in members]
    inputs = [
        t[modality] if m.input_keep is None else t[modality] * m.input_keep.to(t[modality].dtype)
        for m, t in zip(members, tensors, strict=True)
    ]
    stacked = StackedSplit(
        x=torch.stack(inputs),
        y=torch.stack([t["y"] for t in tensors]),
    )
    if members[0].teacher is not None:
        outputs = [m.teacher_outputs(split) for m in members]
        stacked.teacher_logits = torch.stack([o.logits for o in outputs])
        if features and split == "train":
            stacked.teacher_features = [
                torch.stack(layer) for layer in zip(*(o.features for o in outputs), strict=True)
            ]
    return stacked


def _fit(
    members: list[_Member],
    env: RunEnv,
    modality: str,
    train: Mapping[str, Any],
    distiller: Any,
) -> list[MemberOutcome]:
    """Train the members' networks together; per member its metrics, timing and weights."""
    features = distiller is not None and distiller.name not in LOGIT_DISTILLERS
    splits = {s: _stack(members, s, modality, features) for s in SPLITS}
    loggers = [m.logger for m in members]

    def sink(k: int, metrics: dict[str, float], step: int) -> None:
        if loggers[k] is not None:
            loggers[k].log_metrics(metrics, step)

    dm = members[0].dm
    module = EnsembleModule(
        [m.network for m in members],
        splits,
        seeds=[m.dm.seed for m in members],
        batch_size=dm.batch_size,
        eval_batch_size=dm.eval_batch_size,
        distiller=distiller,
        lam=train.get("lam", 0.0) if distiller is not None else 0.0,
        ce_weight=train.get("ce_weight") if distiller is not None else None,
        lr=train["lr"],
        weight_decay=train["weight_decay"],
        optimizer=train["optimizer"],
        momentum=train["momentum"],
        val_every=train["val_every"],
        monitor_T=train.get("monitor_T", 1.0),
        sink=sink,
    )
    ids = config_hash({"members": [m.run_id for m in members], "modality": modality})
    checkpoints = Path(env.runs_dir) / env.experiment / "ensembles" / ids / "checkpoints"
    trainer = make_trainer(
        train["epochs"],
        env.devices,
        None,
        checkpoint_dir=checkpoints,
        checkpoint_interval_s=env.checkpoint_interval_s,
        limit_val_batches=0,
    )
    resume = resumable_checkpoint(checkpoints)
    start = time.perf_counter()
    trainer.fit(module, ckpt_path=resume)
    fit_s = time.perf_counter() - start
    if trainer.is_global_zero:
        remove_checkpoint(checkpoints)
    start = time.perf_counter()
    tests = module.evaluate("test")
    test_s = time.perf_counter() - start
    share = {
        "fit_s": fit_s / len(members),
        "test_s": test_s / len(members),
        "ensemble_members": float(len(members)),
        "ensemble_fit_s": fit_s,
        **({"resumed": 1.0} if resume is not None else {}),
    }
    outcomes: list[MemberOutcome] = []
    for k, m in enumerate(members):
        if module.errors[k] is not None:
            outcomes.append(FloatingPointError(module.errors[k]))
            if m.logger is not None:
                m.logger.close()
            continue
        if m.logger is not None:
            m.logger.log_metrics(tests[k], module.global_step)
        history = {
            f"history/{name}/{epoch:04d}": value
            for name, epochs in module.history[k].items()
            for epoch, value in sorted(epochs.items())
        }
        outcomes.append(_Trained({**tests[k], **history}, dict(share), module.member_state(k)))
    return outcomes
