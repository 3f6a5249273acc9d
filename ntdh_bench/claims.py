"""Verdicts on the paper's claims, stated with the numbers behind them.

The suite reproduces the protocol, not the paper's numbers: each claim is checked on what was
measured and reported as holding or not, whichever way it goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Verdict:
    """A claim, whether it holds (``None``: the grid cannot decide it), and the numbers."""

    claim: str
    holds: bool | None
    evidence: str

    def line(self) -> str:
        label = {True: "holds", False: "does not hold", None: "not judged"}[self.holds]
        return f"[{label}] {self.claim}: {self.evidence}"


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` against ``xs``."""
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def write_verdicts(verdicts: Sequence[Verdict], path) -> str:
    """Write the verdicts as a Markdown list and return the text."""
    text = "\n".join(f"- {v.line()}" for v in verdicts) + "\n"
    path.write_text(text)
    return text
