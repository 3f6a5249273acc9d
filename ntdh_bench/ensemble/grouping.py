"""Which runs of a sweep can train together as one vectorised ensemble, and in what groups.

Runs may share an ensemble when they differ only in what varies *between* members of one
``torch.func`` model: the seed (initialisation and batch order), the data cell (the synthetic
gap and its data seed) and the teacher's feature mask. Everything else (role, architecture,
schedule, optimizer, loss weights, distiller and its temperature) must be equal, because it is
one model, one optimizer and one loss function for all members. Runs that cannot join an
ensemble run one by one as before.

Eligible, on purpose narrow (what makes members exactly equivalent to runs alone):

* datasets held in memory as tensors, listed in :data:`ENSEMBLE_DATASETS`;
* networks without buffers (the MLPs: no batch-norm statistics to stack);
* roles ``teacher``, ``student`` and ``kd``; a KD distiller without parameters or state whose
  loss is a pure function of the two networks' outputs (:data:`ENSEMBLE_DISTILLERS`: the
  logit losses, and RKD, PKT and SP on the embedding or last feature map);
* no sample mask (its per-batch weights act on one run's batch); feature masks on the
  teacher's input (a teacher retrained on masked input trains on ``xa * keep``) or anywhere
  on a student's teacher (they change only the teacher's outputs, which each member keeps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from ntdh_bench.results import config_hash

ENSEMBLE_DATASETS = ("synthetic", "digits")
ENSEMBLE_MODELS = ("mlp",)
ENSEMBLE_ROLES = ("teacher", "student", "kd")
LOGIT_DISTILLERS = ("kd", "decoupled", "dkd")  # read the logits only
ENSEMBLE_DISTILLERS = (*LOGIT_DISTILLERS, "rkd", "pkt", "sp")  # no parameters, vmappable
MEMBER_DATASET_KEYS = ("gap", "data_seed")  # dataset options that may differ between members
MAX_MEMBERS = 64

T = TypeVar("T")


def ineligibility(config: Mapping[str, Any]) -> str | None:
    """Why a resolved run config cannot join an ensemble, or None when it can."""
    if config["role"] not in ENSEMBLE_ROLES:
        return f"role {config['role']!r} trains alone"
    if config["dataset"]["name"] not in ENSEMBLE_DATASETS:
        return f"dataset {config['dataset']['name']!r} is not in {ENSEMBLE_DATASETS}"
    if config["model"]["name"] not in ENSEMBLE_MODELS:
        return f"model {config['model']['name']!r} is not in {ENSEMBLE_MODELS}"
    if config.get("sample_mask"):
        return "sample-masked runs train alone"
    mask = config.get("feature_mask")
    if mask and config["role"] == "teacher" and (mask["teacher"] != "retrain" or mask["layer"]):
        return "only a teacher retrained on an input mask trains in an ensemble"
    if config["role"] == "kd" and config["distiller"]["name"] not in ENSEMBLE_DISTILLERS:
        return f"distiller {config['distiller']['name']!r} is not in {ENSEMBLE_DISTILLERS}"
    return None


def ensemble_key(config: Mapping[str, Any]) -> str | None:
    """Equal keys: the runs can train as members of one ensemble; None: it trains alone."""
    if ineligibility(config) is not None:
        return None
    shared = {k: v for k, v in config.items() if k not in ("seed", "feature_mask")}
    shared["dataset"] = {k: v for k, v in config["dataset"].items() if k not in MEMBER_DATASET_KEYS}
    return config_hash(shared)


def plan_tasks(
    items: Sequence[T],
    config_of: Any,
    workers: int = 1,
    max_members: int = MAX_MEMBERS,
) -> list[T | list[T]]:
    """The sweep's work as tasks: single items, and lists of items that train together.

    Items keep the sweep's order (teachers before the students that read them) by the
    position of each group's first item. A group is cut into ``workers`` near-equal parts
    (so that every worker process has an ensemble to train) of at most ``max_members``; a part
    of one member is a single run.
    """
    groups: dict[str, list[T]] = {}
    order: list[tuple[str, T | None]] = []
    for item in items:
        key = ensemble_key(config_of(item))
        if key is None:
            order.append(("", item))
            continue
        if key not in groups:
            groups[key] = []
            order.append((key, None))
        groups[key].append(item)
    tasks: list[T | list[T]] = []
    for key, item in order:
        if not key:
            tasks.append(item)
            continue
        members = groups[key]
        parts = max(min(workers, len(members)), -(-len(members) // max_members))
        size = -(-len(members) // parts)
        for start in range(0, len(members), size):
            part = members[start : start + size]
            tasks.append(part if len(part) > 1 else part[0])
    return tasks
