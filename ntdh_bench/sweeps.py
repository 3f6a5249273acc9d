"""Small helpers shared by the experiment scripts that take ``--dataset`` (weight sweep, mask
sweep, Table II): the dataset's config with a clear exit when there is none, and percentages.
"""

from __future__ import annotations

from typing import Any

from ntdh_bench.experiment import CONFIG_DIR, Experiment
from ntdh_bench.stats import Estimate


def sweep_config(experiment: Experiment, dataset: str, section: str) -> dict[str, Any]:
    """The dataset's config (``--full`` and ``--set`` applied), or a clear exit without one."""
    if not (CONFIG_DIR / f"{dataset}.yaml").exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise SystemExit(
            f"--dataset {dataset}: there is no {CONFIG_DIR / (dataset + '.yaml')}; datasets "
            f"with a config: {known}. Add the dataset's config (with a '{section}' section) "
            "to run this experiment on it."
        )
    return experiment.dataset_config(dataset)


def pct(e: Estimate) -> Estimate:
    """An estimate of a fraction as a percentage."""
    return Estimate(e.mean * 100, e.half_width * 100, e.n)
