"""Figure helpers: curves of seed means with their 95% bands, saved as PNG.

Matplotlib runs on the Agg backend so figures are written on machines with no display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from ntdh_core.io import atomic_write

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ntdh_bench.stats import Estimate


def plot_estimates(
    ax: Axes,
    xs: Sequence[float],
    estimates: Sequence[Estimate],
    label: str,
    scale: float = 1.0,
    **style: object,
) -> None:
    """A line through the means with a shaded 95% interval (where there is one)."""
    means = [e.mean * scale for e in estimates]
    (line,) = ax.plot(xs, means, marker="o", label=label, **style)
    if any(not math.isnan(e.half_width) for e in estimates):
        lows = [(e.mean - _hw(e)) * scale for e in estimates]
        highs = [(e.mean + _hw(e)) * scale for e in estimates]
        ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)


def _hw(e: Estimate) -> float:
    return 0.0 if math.isnan(e.half_width) else e.half_width


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    try:
        return atomic_write(
            path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        )
    finally:
        plt.close(fig)


def log_figure(fig: Figure, log_dir: str | Path, tag: str, step: int = 0) -> None:
    """Add ``fig`` to TensorBoard as image ``tag`` under ``log_dir`` (the figure stays open).

    Experiments log their report figures to ``runs/<experiment>/figures``, beside the runs'
    own logs, so that ``make tensorboard`` shows them under the Images tab.
    """
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        writer.add_figure(tag, fig, global_step=step, close=False)
    finally:
        writer.close()
