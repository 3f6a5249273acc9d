"""Execute one run from its config: the teacher (cached), a unimodal model, or a student.

A run config is a plain JSON-able dict; its hash is the run's identity::

    {
      "role": "teacher" | "unimodal" | "student" | "kd",
      "seed": 0,
      "dataset": {"name": "synthetic", "gap": 0.2, "data_seed": 0, ...},  # datamodule args
      "model": {"name": "mlp", "hidden": [16, 16]},                      # both networks
      "teacher": {"epochs": 30, "lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam"},
      "student": {"epochs": 30, "lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam",
                  "lam": 0.5},                                            # student roles
      "distiller": {"name": "kd", "T": 4.0, ...},                         # role "kd"
      "modality": "xa" | "xb",                                            # role "unimodal"
      "feature_mask": {"kind": "true", "ratio": 0.25, ...},   # optional, Algorithm 1
      "sample_mask": {"kind": "true", "ratio": 0.25, ...},    # optional, role "kd", Algorithm 2
    }

* ``teacher``: trains the teacher on ``xa`` (or loads it from the cache) and reports its test
  metrics.
* ``unimodal``: one network on one modality alone (Table I's modality strength).
* ``student``: the no-KD baseline: the student on ``xb`` with cross-entropy only; its
  divergences to the teacher are still measured.
* ``kd``: the student distilled from the frozen teacher.

The teacher is trained once per identity: a hash of the dataset, model, teacher training
settings and seed, stored as ``<cache_dir>/teachers/<hash>/{model.pt, meta.json}`` and written
atomically, so any run of any experiment that needs the same teacher reuses it. A feature mask
(:mod:`ntdh_bench.masking`) wraps the teacher: retrained on the masked input (its identity then
includes the mask) or, with ``retrain_teacher: false``, the unmasked teacher only fed it. Student
runs also return their per-epoch validation curves as ``history/<metric>/<epoch>`` metrics
(:mod:`ntdh_bench.callbacks`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from datamodules import DATAMODULES, PairedDataModule, build_datamodule
from models import build_model
from ntdh_bench.callbacks import MetricHistory
from ntdh_bench.distillers import DISTILLERS, build_distiller
from ntdh_bench.masking import SampleMask, build_feature_mask, resolve_masks
from ntdh_bench.module import CrossModalKD, UnimodalModule
from ntdh_bench.results import canonical_json, config_hash
from ntdh_bench.training import (
    DeviceConfig,
    fit_and_test,
    log_hparams,
    make_trainer,
    quiet_lightning,
)

ROLES = ("teacher", "unimodal", "student", "kd")
# Teachers trained by this process, by cache folder: reused without reading the cache back.
_TRAINED_HERE: dict[str, tuple[dict[str, torch.Tensor], dict[str, float]]] = {}
TRAIN_DEFAULTS = {"epochs": 30, "lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam"}


@dataclass
class RunEnv:
    """Where a run writes: TensorBoard logs, the teacher cache; and on which devices."""

    runs_dir: Path = Path("runs")
    cache_dir: Path = Path("cache")
    devices: DeviceConfig = field(default_factory=DeviceConfig)
    experiment: str = "adhoc"
    checkpoint_interval_s: float = 60.0  # epoch-end resume checkpoints, at most this often


@dataclass
class RunResult:
    metrics: dict[str, float]
    timing: dict[str, float]


def resolve_distiller(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Fill a distiller spec with its defaults so the run hash names every setting."""
    if spec is None:
        return None
    name = spec["name"]
    if name not in DISTILLERS:
        raise ValueError(f"unknown distiller {name!r}; registered: {sorted(DISTILLERS)}")
    return {
        "name": name,
        **DISTILLERS[name].defaults(),
        **{k: v for k, v in spec.items() if k != "name"},
    }


def validate_config(config: Mapping[str, Any]) -> None:
    """Fail fast with a clear message on a malformed run config."""
    role = config.get("role")
    if role not in ROLES:
        raise ValueError(f"run role must be one of {ROLES}, got {role!r}")
    for key in ("seed", "dataset", "model", "teacher"):
        if key not in config:
            raise ValueError(f"run config lacks {key!r}: {canonical_json(config)}")
    if config["dataset"].get("name") not in DATAMODULES:
        raise ValueError(
            f"unknown dataset {config['dataset'].get('name')!r}; registered: {sorted(DATAMODULES)}"
        )
    if role in ("student", "kd") and "student" not in config:
        raise ValueError(f"a {role!r} run needs a 'student' section")
    if role == "kd" and not config.get("distiller"):
        raise ValueError("a 'kd' run needs a 'distiller' section")
    if role == "unimodal" and config.get("modality") not in ("xa", "xb"):
        raise ValueError("a 'unimodal' run needs 'modality': 'xa' or 'xb'")
    resolve_masks(config)  # checks the feature_mask / sample_mask sections


def _datamodule(config: Mapping[str, Any]) -> PairedDataModule:
    args = {k: v for k, v in config["dataset"].items() if k != "name"}
    return build_datamodule(config["dataset"]["name"], seed=config["seed"], **args)


def _network(config: Mapping[str, Any], dm: PairedDataModule, modality: str) -> nn.Module:
    shape_a, shape_b = dm.input_shapes()
    args = {k: v for k, v in config["model"].items() if k != "name"}
    shape = shape_a if modality == "xa" else shape_b
    return build_model(config["model"]["name"], shape, dm.num_classes, **args)


def teacher_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that defines a teacher; its hash keys the teacher cache.

    A teacher retrained on feature-masked input is another teacher: its mask is part of its
    identity. A teacher only fed the masked input is the unmasked one.
    """
    identity = {
        "dataset": config["dataset"],
        "model": config["model"],
        "train": {**TRAIN_DEFAULTS, **config["teacher"]},
        "seed": config["seed"],
    }
    mask = resolve_masks(config).get("feature_mask")
    if mask and mask["retrain_teacher"]:
        identity["feature_mask"] = {k: v for k, v in mask.items() if k != "retrain_teacher"}
    return identity


def _feature_mask(config: Mapping[str, Any], env: RunEnv) -> Callable[[nn.Module], nn.Module]:
    """What wraps the teacher in its feature mask (Algorithm 1's saliency is cached)."""
    dm = _datamodule(config)
    device = "cuda" if env.devices.gpus > 0 and torch.cuda.is_available() else "cpu"
    return build_feature_mask(
        resolve_masks(config), dm, lambda m: _network(config, dm, m), env.cache_dir, device
    )


def _train_unimodal(
    config: Mapping[str, Any],
    train: Mapping[str, Any],
    modality: str,
    env: RunEnv,
    name: str,
    version: str,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> tuple[nn.Module, dict[str, float], dict[str, float], L.Trainer]:
    L.seed_everything(config["seed"], workers=True, verbose=False)
    dm = _datamodule(config)
    model = _network(config, dm, modality)
    if wrap is not None:
        model = wrap(model)
    module = UnimodalModule(
        model,
        dm.num_classes,
        modality=modality,
        task=dm.task,
        lr=train["lr"],
        weight_decay=train["weight_decay"],
        optimizer=train["optimizer"],
    )
    ckpt_dir = Path(env.runs_dir) / name / version / "checkpoints"
    trainer = make_trainer(
        train["epochs"],
        env.devices,
        env.runs_dir,
        name,
        version,
        checkpoint_dir=ckpt_dir,
        checkpoint_interval_s=env.checkpoint_interval_s,
    )
    metrics, timing = fit_and_test(trainer, module, dm, ckpt_dir)
    return model, metrics, timing, trainer


def load_or_train_teacher(
    config: Mapping[str, Any], env: RunEnv
) -> tuple[nn.Module, dict[str, float]]:
    """The frozen teacher for ``config`` and its test metrics, trained at most once."""
    identity = teacher_identity(config)
    tid = config_hash(identity)
    wrap = _feature_mask(config, env) if "feature_mask" in identity else None
    folder = Path(env.cache_dir) / "teachers" / tid
    weights, meta_path = folder / "model.pt", folder / "meta.json"
    if str(folder) in _TRAINED_HERE:  # under DDP every rank trained it; none waits on disk
        state, metrics = _TRAINED_HERE[str(folder)]
    elif weights.exists() and meta_path.exists():
        state = torch.load(weights, map_location="cpu", weights_only=True)
        metrics = json.loads(meta_path.read_text())["metrics"]
    else:
        state = None
    if state is not None:
        model = _network(config, _datamodule(config), "xa")
        if wrap is not None:
            model = wrap(model)
        model.load_state_dict(state)
        return model.eval(), dict(metrics)
    model, metrics, timing, trainer = _train_unimodal(
        config, identity["train"], "xa", env, "teachers", tid, wrap
    )
    log_hparams(trainer, identity, metrics)
    if trainer.is_global_zero:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save(model.state_dict(), weights)
        _atomic_write(
            meta_path,
            json.dumps({"identity": identity, "metrics": metrics, "timing": timing}, indent=2),
        )
    model = model.cpu().eval()
    _TRAINED_HERE[str(folder)] = ({k: v.clone() for k, v in model.state_dict().items()}, metrics)
    return model, metrics


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def execute_run(config: Mapping[str, Any], env: RunEnv, run_id: str | None = None) -> RunResult:
    """Run one config to completion and return its test metrics and timing."""
    validate_config(config)
    run_id = run_id or config_hash(config)
    role = config["role"]
    with quiet_lightning():
        if role == "unimodal":
            train = {**TRAIN_DEFAULTS, **config["teacher"]}
            _, metrics, timing, trainer = _train_unimodal(
                config, train, config["modality"], env, env.experiment, run_id
            )
            log_hparams(trainer, config, metrics)
            return RunResult(metrics, timing)
        teacher, teacher_metrics = load_or_train_teacher(config, env)
        prefixed = {f"teacher/{k}": v for k, v in teacher_metrics.items()}
        if role == "teacher":
            return RunResult(prefixed, {})
        mask = resolve_masks(config).get("feature_mask")
        if mask and not mask["retrain_teacher"]:  # fed the masked input, not retrained on it
            teacher = _feature_mask(config, env)(teacher)
        return _train_student(config, env, run_id, teacher, prefixed)


def _train_student(
    config: Mapping[str, Any],
    env: RunEnv,
    run_id: str,
    teacher: nn.Module,
    teacher_metrics: dict[str, float],
) -> RunResult:
    train = {**TRAIN_DEFAULTS, **config["student"]}
    L.seed_everything(config["seed"], workers=True, verbose=False)
    dm = _datamodule(config)
    student = _network(config, dm, "xb")
    distiller, sample_mask = None, None
    if config["role"] == "kd":
        spec = dict(config["distiller"])
        distiller = build_distiller(spec.pop("name"), task=dm.task, **spec)
        mask_spec = resolve_masks(config).get("sample_mask")
        sample_mask = SampleMask.from_spec(mask_spec) if mask_spec else None
    module = CrossModalKD(
        student,
        teacher,
        distiller,
        dm.num_classes,
        lam=train.get("lam", 0.5) if distiller else 0.0,
        task=dm.task,
        lr=train["lr"],
        weight_decay=train["weight_decay"],
        optimizer=train["optimizer"],
        sample_mask=sample_mask,
    )
    history = MetricHistory()
    ckpt_dir = Path(env.runs_dir) / env.experiment / run_id / "checkpoints"
    trainer = make_trainer(
        train["epochs"],
        env.devices,
        env.runs_dir,
        env.experiment,
        run_id,
        callbacks=[history],
        checkpoint_dir=ckpt_dir,
        checkpoint_interval_s=env.checkpoint_interval_s,
    )
    metrics, timing = fit_and_test(trainer, module, dm, ckpt_dir)
    metrics.update(teacher_metrics)
    log_hparams(trainer, config, metrics)
    metrics.update(history.as_metrics())  # per-epoch curves, for figures over training
    return RunResult(metrics, timing)
