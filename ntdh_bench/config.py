"""The one owner of run configs: loading a dataset's defaults, overrides, and resolving a run.

A run config is a plain JSON-able dict; :func:`resolve_run_config` completes and checks it once
(dataset and model options against their classes' signatures, training schedules, distiller
defaults, masks, protocol), and the run's id is the hash of the result (:func:`run_id`).
Nothing downstream merges defaults again, so changing any default gives new run ids instead of
silently reusing old records. Resolving is idempotent::

    {
      "role": "teacher" | "unimodal" | "student" | "kd",
      "seed": 0,
      "protocol": "suite" | "released",
      "dataset": {"name": "synthetic", "gap": 0.2, ...},      # every datamodule option
      "model": {"name": "mlp", "hidden": [16, 16]},           # every model option
      "teacher": {"epochs": 30, "lr": 0.001, ...},            # TrainSettings
      "student": {..., "lam": 0.5, "monitor_T": 1.0},         # StudentSettings (students)
      "distiller": {"name": "kd", "T": 4.0},                  # every option (role kd)
      "modality": "xa" | "xb",                                # role unimodal
      "feature_mask": {...}, "sample_mask": {...},            # ntdh_bench.masking.specs
    }

Per-dataset defaults live in ``experiments/configs/<dataset>.yaml``; ``full:`` holds the longer
schedule and ``protocols: {released: ...}`` the authors' released training, merged on request.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from datamodules import DATAMODULES
from models import MODELS
from ntdh_bench.distillers import DISTILLERS
from ntdh_bench.masking.specs import check_mask_roles, resolve_feature_mask, resolve_sample_mask
from ntdh_bench.results import config_hash
from ntdh_bench.validation import (
    ConfigError,
    Section,
    suggest,
    validate_arguments,
    validate_section,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"
ROLES = ("teacher", "unimodal", "student", "kd")
PROTOCOLS = ("suite", "released")
# The sections each role depends on: a teacher's config holds no student or distiller, so every
# student of every experiment that shares data, model, seed and teacher schedule shares it.
ROLE_SECTIONS = {
    "teacher": ("feature_mask",),
    "unimodal": ("modality",),
    "student": ("student", "feature_mask"),
    "kd": ("student", "distiller", "feature_mask", "sample_mask"),
}
_COMMON = ("role", "seed", "protocol", "dataset", "model", "teacher")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)


class TrainSettings(Section):
    """One network's training schedule (teachers, unimodal runs, Eq. 26 uses its own)."""

    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    val_every: int = Field(1, ge=1, description="validate every N epochs")


class StudentSettings(TrainSettings):
    """A student's schedule: ``loss = (1 - lam) CE + lam * distill`` (Eq. 4)."""

    lam: float = Field(0.5, ge=0, le=1)
    ce_weight: float | None = Field(None, ge=0, description="None: 1 - lam (Eq. 4)")
    monitor_T: float = Field(1.0, gt=0)  # noqa: N815 (the temperature of the logged divergences)


# --- dataset configs ---------------------------------------------------------------------
def datasets_with_config() -> list[str]:
    """Registered datasets that have ``experiments/configs/<name>.yaml``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem in DATAMODULES)


def load_dataset_config(dataset: str) -> dict[str, Any]:
    """The YAML defaults of ``dataset`` as they are on disk."""
    path = CONFIG_DIR / f"{dataset}.yaml"
    if not path.exists():
        known = datasets_with_config()
        raise ConfigError(
            f"there is no {path}; datasets with a config: {known}{suggest(dataset, known)}"
        )
    return yaml.safe_load(path.read_text())


def parse_value(raw: str) -> Any:
    """A ``--set`` value: YAML, except that every number is a number (``1e-4`` is a float;
    YAML 1.1 would read it as a string)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a copy of ``config``."""
    out = copy.deepcopy(dict(config))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        keys = dotted.split(".")
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node[keys[-1]] = parse_value(raw)
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``update`` (a new dict; inputs untouched)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def dataset_config(
    dataset: str,
    *,
    full: bool = False,
    protocol: str = "suite",
    quick: str | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """A dataset's experiment config: YAML defaults, then ``full:`` (with ``full``), then the
    protocol's section, then the ``quick:`` of section ``quick`` (a smoke-test size), then the
    ``--set`` overrides, which always win. The result names its ``protocol``."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    config = load_dataset_config(dataset)
    extra_full = config.pop("full", None) or {}
    protocols = config.pop("protocols", None) or {}
    if full:
        config = deep_merge(config, extra_full)
    if protocol != "suite":
        if protocol not in protocols:
            raise ConfigError(
                f"{dataset}: no '{protocol}' protocol in {CONFIG_DIR / (dataset + '.yaml')}; "
                f"it has {sorted(['suite', *protocols])}"
            )
        config = deep_merge(config, protocols[protocol])
    if quick is not None:
        config = deep_merge(config, (config.get(quick) or {}).get("quick", {}))
    config = apply_overrides(config, overrides)
    config["protocol"] = protocol
    return config


TRAINED_SECTIONS = ("teacher", "student")


def validate_after_last_epoch(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with each trained network (teacher, student) that has no explicit
    ``val_every`` validated once, after its last epoch (``val_every = epochs``).

    For experiments whose figures and history read only the final metrics: a validation pass
    after every epoch of a small network costs as much as a third of its training and no
    report reads it. An explicit ``val_every`` (in the YAML or ``--set student.val_every=1``,
    for curves in TensorBoard) is kept.
    """
    config = dict(config)
    for name in TRAINED_SECTIONS:
        section = config.get(name)
        if isinstance(section, Mapping) and "val_every" not in section:
            epochs = section.get("epochs", TrainSettings.model_fields["epochs"].default)
            config[name] = {**section, "val_every": epochs}
    return config


# --- one run -----------------------------------------------------------------------------
def _plugin(
    registry: Mapping[str, Any], section: Mapping[str, Any] | None, where: str
) -> tuple[str, dict[str, Any]]:
    if not isinstance(section, Mapping) or "name" not in section:
        raise ConfigError(f"{where}: needs a 'name' (one of {sorted(registry)})")
    name = section["name"]
    if name not in registry:
        raise ConfigError(
            f"{where}.name: unknown {where} {name!r}{suggest(str(name), registry)}; "
            f"registered: {sorted(registry)}"
        )
    return name, {k: v for k, v in section.items() if k != "name"}


def resolve_dataset(section: Mapping[str, Any]) -> dict[str, Any]:
    name, args = _plugin(DATAMODULES, section, "dataset")
    options = validate_arguments(DATAMODULES[name].__init__, args, "dataset", skip=("seed",))
    return {"name": name, **options}


def resolve_model(section: Mapping[str, Any]) -> dict[str, Any]:
    name, args = _plugin(MODELS, section, "model")
    skip = ("input_shape", "num_classes")
    return {"name": name, **validate_arguments(MODELS[name].from_shape, args, "model", skip)}


def resolve_distiller(section: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of the distiller, checked: temperatures positive, weights non-negative."""
    name, args = _plugin(DISTILLERS, section, "distiller")
    options = validate_arguments(DISTILLERS[name].__init__, args, "distiller", skip=("task",))
    for key, value in options.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if key == "T" and value <= 0:
            raise ConfigError(f"distiller.T: the temperature must be positive, got {value}")
        if (key in ("alpha", "beta") or key.endswith("weight")) and value < 0:
            raise ConfigError(f"distiller.{key}: a loss weight must be >= 0, got {value}")
    return {"name": name, **options}


def resolve_run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's complete, checked config (idempotent); its hash is the run's id.

    Sections the role does not use are dropped, so that, e.g., a teacher's id does not depend
    on any student setting.
    """
    role = config.get("role")
    if role not in ROLES:
        raise ConfigError(f"role must be one of {ROLES}, got {role!r}")
    allowed = set(_COMMON) | set(ROLE_SECTIONS[role])
    known = set(_COMMON) | {s for sections in ROLE_SECTIONS.values() for s in sections}
    unknown = [k for k in config if k not in known]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{key}: unknown config section{suggest(key, known)}")
    for key in ("dataset", "model", "teacher"):
        if key not in config:
            raise ConfigError(f"a run config needs a {key!r} section")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    protocol = config.get("protocol", "suite")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    out: dict[str, Any] = {
        "role": role,
        "seed": seed,
        "protocol": protocol,
        "dataset": resolve_dataset(config["dataset"]),
        "model": resolve_model(config["model"]),
        "teacher": validate_section(TrainSettings, config["teacher"], "teacher"),
    }
    if "student" in allowed:
        if "student" not in config:
            raise ConfigError(f"a {role!r} run needs a 'student' section")
        out["student"] = validate_section(StudentSettings, config["student"], "student")
    if role == "kd":
        if not config.get("distiller"):
            raise ConfigError("a 'kd' run needs a 'distiller' section")
        out["distiller"] = resolve_distiller(config["distiller"])
    if role == "unimodal":
        if config.get("modality") not in ("xa", "xb"):
            raise ConfigError("a 'unimodal' run needs 'modality': 'xa' or 'xb'")
        out["modality"] = config["modality"]
    if "feature_mask" in allowed and config.get("feature_mask"):
        out["feature_mask"] = resolve_feature_mask(config["feature_mask"], seed)
    if "sample_mask" in allowed and config.get("sample_mask"):
        out["sample_mask"] = resolve_sample_mask(config["sample_mask"], seed)
    check_mask_roles({**config, **out})
    return out


def run_id(config: Mapping[str, Any]) -> str:
    """The id of a run: the hash of its resolved config."""
    return config_hash(resolve_run_config(config))


def run_config(
    base: Mapping[str, Any],
    role: str,
    seed: int,
    dataset: Mapping[str, Any] | None = None,
    distiller: Mapping[str, Any] | None = None,
    modality: str | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A resolved run config from an experiment config (:func:`dataset_config`).

    ``dataset`` updates the dataset options (a gap, a data seed), ``distiller`` replaces the
    config's distiller, ``sections`` adds mask sections.
    """
    config: dict[str, Any] = {
        "role": role,
        "seed": seed,
        "protocol": base.get("protocol", "suite"),
        "dataset": {**base["dataset"], **(dataset or {})},
        "model": dict(base["model"]),
        "teacher": dict(base["teacher"]),
    }
    if role in ("student", "kd"):
        config["student"] = dict(base["student"])
    if role == "kd":
        config["distiller"] = dict(distiller or base["distiller"])
    if role == "unimodal":
        config["modality"] = modality
    config.update({k: v for k, v in sections.items() if v})
    return resolve_run_config(config)
