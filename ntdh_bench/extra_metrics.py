"""Evaluation metrics beyond the task's own (accuracy, mIoU) that a dataset asks for by name.

A datamodule lists them in its ``extra_metrics`` class attribute (e.g. NYU SSC's ``("ssc",)``:
the scene-completion IoU and SSC mIoU the SSC literature reports); the runner adds the
callbacks named there to every student run on that data. Datamodules name metrics instead of
importing them, since imports only go down (``ntdh_bench -> datamodules``).
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L

from datamodules import PairedDataModule
from ntdh_bench.ssc_metrics import SSCMonitor

# name -> the callback that logs it for a datamodule
METRIC_CALLBACKS: dict[str, Callable[[PairedDataModule], L.Callback]] = {
    "ssc": lambda dm: SSCMonitor(dm.num_classes, getattr(dm, "class_names", None)),
}


def metric_callbacks(dm: PairedDataModule) -> list[L.Callback]:
    """The callbacks of the metrics ``dm.extra_metrics`` names (none by default)."""
    names = tuple(getattr(dm, "extra_metrics", ()))
    unknown = [n for n in names if n not in METRIC_CALLBACKS]
    if unknown:
        raise ValueError(
            f"{type(dm).__name__}.extra_metrics names unknown metric(s) {unknown}; known: "
            f"{sorted(METRIC_CALLBACKS)} (register one in ntdh_bench.extra_metrics)"
        )
    return [METRIC_CALLBACKS[n](dm) for n in names]
