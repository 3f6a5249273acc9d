"""Mean and 95% confidence interval over seeds, the unit of every table cell and curve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` seeds with the half-width of its 95% Student-t interval.

    ``half_width`` is NaN for a single seed: one run gives no interval, and the tables say so.
    """

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, digits: int = 2, scale: float = 1.0) -> str:
        """``"71.4 ± 0.8"``; the interval is omitted when there is none."""
        if math.isnan(self.mean):
            return "n/a"
        text = f"{self.mean * scale:.{digits}f}"
        if not math.isnan(self.half_width):
            text += f" ± {self.half_width * scale:.{digits}f}"
        return text


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and t-interval half-width ``t_{(1+c)/2, n-1} * s / sqrt(n)`` of ``values``."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n == 1:
        return Estimate(mean, math.nan, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    t = stats.t.ppf(0.5 + confidence / 2, df=n - 1)
    return Estimate(mean, float(t * sd / math.sqrt(n)), n)
