"""Modality strength: the test accuracy of the network trained on each modality alone.

Table I's row for a dataset, and the way to tune the noise levels that equalise the two
modalities of MNIST / MNIST-M and digits (the paper's Assumption 2)::

    from ntdh_bench.strength import modality_strength
    modality_strength("digits", dataset={"noise": {"digits": 3.0, "digits_m": 1.0}})
    # {'digits': 0.70, 'digits_m': 0.71}   (mean test accuracy over seeds, by modality name)

It runs exactly what ``experiments/table1.py`` runs (the ``unimodal`` role of
:mod:`ntdh_bench.runner`, with the dataset's config), so the numbers agree with Table I's; the
TensorBoard logs and the cache go to a temporary folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ntdh_bench.builders import build_run_datamodule
from ntdh_bench.config import dataset_config, deep_merge, run_config
from ntdh_bench.runner import RunEnv, execute_run


def modality_strength(
    name: str,
    dataset: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    seeds: int = 1,
    metric: str = "test/acc",
) -> dict[str, float]:
    """Mean ``metric`` over ``seeds`` of the network trained on each modality alone.

    ``dataset`` overrides the config's dataset arguments (e.g. ``noise``); ``train`` its
    teacher schedule, which Table I uses for both modalities (e.g. ``{"epochs": 5}``). Returns
    ``{modality: value}``, keyed by the datamodule's modality names where it has them (the
    teacher's first), else by ``xa`` / ``xb``. Seed ``s`` uses ``seed = data_seed = s``, as
    Table I does.
    """
    config = dataset_config(name)
    config = deep_merge(config, {"dataset": dict(dataset or {}), "teacher": dict(train or {})})
    dm = build_run_datamodule(run_config(config, "unimodal", 0, modality="xa"))
    names = {"xa": getattr(dm, "teacher", "xa"), "xb": getattr(dm, "student", "xb")}
    values: dict[str, list[float]] = {"xa": [], "xb": []}
    with tempfile.TemporaryDirectory(prefix="ntdh-strength-") as tmp:
        env = RunEnv(runs_dir=Path(tmp) / "runs", cache_dir=Path(tmp) / "cache")
        for seed in range(seeds):
            extra = {"data_seed": seed} if hasattr(dm, "data_seed") else {}
            for modality in values:
                spec = run_config(config, "unimodal", seed, extra, modality=modality)
                values[modality].append(execute_run(spec, env).metrics[metric])
    return {names[m]: sum(v) / len(v) for m, v in values.items()}
