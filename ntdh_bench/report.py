"""Reading finished runs for reports: record queries, table cells, reference lines.

Every experiment's report goes through :class:`Records`::

    kd = records.where(role="kd", feature_mask__kind="true", feature_mask__ratio=0.25)
    kd.values("test/acc")        # {seed: value}
    kd.estimate("test/acc")      # mean ± 95% interval over seeds

``where`` takes config paths with ``__`` for the dots; ``None`` matches a missing section or
entry (``feature_mask=None``: runs without a feature mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ntdh_bench.plotting import log_figure, save_figure
from ntdh_bench.results import config_get
from ntdh_bench.stats import Estimate, mean_ci

_ABSENT = object()


def pct(e: Estimate) -> Estimate:
    """An estimate of a fraction as a percentage."""
    return Estimate(e.mean * 100, e.half_width * 100, e.n)


class Records:
    """An immutable selection of run records with query helpers."""

    def __init__(self, records: Iterable[Mapping[str, Any]]) -> None:
        self._items = [r for r in records if isinstance(r, Mapping) and "config" in r]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def where(self, predicate: Callable[[Mapping[str, Any]], bool] | None = None, **conditions):
        """The records whose config matches every condition (and ``predicate(config)``)."""

        def match(config: Mapping[str, Any]) -> bool:
            for key, wanted in conditions.items():
                value = config_get(config, key.replace("__", "."), _ABSENT)
                if wanted is None:
                    if value is not _ABSENT and value is not None:
                        return False
                elif value is _ABSENT or value != wanted:
                    return False
            return predicate is None or predicate(config)

        return Records(r for r in self._items if match(r["config"]))

    def values(self, metric: str) -> dict[int, float]:
        """``{seed: metric}`` of the selection (records lacking the metric are left out)."""
        return {
            int(r["config"]["seed"]): float(r["metrics"][metric])
            for r in self._items
            if metric in r.get("metrics", {})
        }

    def estimate(self, metric: str, percent: bool = False) -> Estimate:
        """Mean ± 95% interval of ``metric`` over seeds."""
        e = mean_ci(list(self.values(metric).values()))
        return pct(e) if percent else e

    def first_config(self) -> Mapping[str, Any] | None:
        return self._items[0]["config"] if self._items else None

    def metric_name(self) -> str:
        """The headline metric: ``test/ssc_miou`` for scene completion (the SSC literature's
        mIoU over the non-empty classes), ``test/miou`` for other dense tasks, else
        ``test/acc``."""
        for name in ("test/ssc_miou", "test/miou"):
            if any(name in r.get("metrics", {}) for r in self._items):
                return name
        return "test/acc"


METRIC_LABELS = {"test/ssc_miou": "SSC mIoU", "test/miou": "mIoU", "test/acc": "acc"}


def metric_label(metric: str) -> str:
    """How tables and verdicts name a test metric (``test/ssc_miou`` -> ``SSC mIoU``)."""
    return METRIC_LABELS.get(metric, metric.split("/")[-1])


def mean_over(cells: Iterable[Mapping[int, float]]) -> dict[int, float]:
    """Per seed, the mean over several cells (e.g. methods), for the seeds all of them have."""
    cells = list(cells)
    if not cells or not all(cells):
        return {}
    seeds = set.intersection(*(set(c) for c in cells))
    return {s: sum(c[s] for c in cells) / len(cells) for s in sorted(seeds)}


def reference_lines(ax: Axes, references: Iterable[tuple[str, str, Estimate]], scale: float = 1.0):
    """Horizontal lines for the reference cells (unmasked KD, no KD ...) that have data."""
    for label, style, estimate in references:
        if not math.isnan(estimate.mean):
            ax.axhline(scale * estimate.mean, color="k", linestyle=style, label=label)


def near_chance(accuracy: float, num_classes: int | None, margin: float = 0.05) -> bool:
    """Whether an accuracy is within ``margin`` of guessing (a wrecked masked teacher)."""
    if num_classes is None or math.isnan(accuracy):
        return False
    return accuracy < 1.0 / num_classes + margin


def publish(fig: Figure, results_dir: Path, runs_dir: Path, experiment: str, stem: str) -> str:
    """Save ``fig`` as ``<results_dir>/<stem>.png`` and log it to TensorBoard beside the runs
    (``<runs_dir>/<experiment>/figures``, Images tab); returns the file name."""
    log_figure(fig, Path(runs_dir) / experiment / "figures", f"{experiment}/{stem}")
    save_figure(fig, Path(results_dir) / f"{stem}.png")
    return f"{stem}.png"
