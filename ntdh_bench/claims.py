"""Verdicts on the paper's claims, judged on paired differences over seeds.

A claim compares two conditions that share seed, data and teacher (true mask vs random mask,
KD vs no KD, beta = 8 vs beta = 0 ...). Per seed the difference ``a - b`` is taken; the claim
*holds* when the 95% t-interval of the mean difference lies above zero (the claimed
direction), *does not hold* when it lies below, and is *not shown* when it contains zero. With
fewer than two paired seeds, or a missing or failed cell, it is *not judged*, with the reason.
Every verdict carries the numbers behind it and where it comes from (artefact, dataset,
protocol, reading), so :mod:`ntdh_bench.claims_page` can collect them into one page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ntdh_bench.stats import Estimate, mean_ci
from ntdh_core.io import atomic_write

HOLDS, DOES_NOT_HOLD, NOT_SHOWN, NOT_JUDGED = "holds", "does not hold", "not shown", "not judged"
STATUSES = (HOLDS, DOES_NOT_HOLD, NOT_SHOWN, NOT_JUDGED)
VERDICTS_JSON = "verdicts.json"


@dataclass(frozen=True)
class Verdict:
    """A claim, its status (one of :data:`STATUSES`), and the numbers behind it."""

    claim: str
    status: str
    evidence: str
    difference: Estimate | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    scale: float = 1.0  # how the difference is shown: x scale, digits, unit
    digits: int = 2
    unit: str = ""

    def difference_text(self) -> str:
        """``"3.0 ± 2.4 points"``, or ``"n/a"``."""
        if self.difference is None or math.isnan(self.difference.mean):
            return "n/a"
        return f"{self.difference.format(self.digits, self.scale)}{self.unit}"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"verdict status must be one of {STATUSES}, got {self.status!r}")

    @property
    def holds(self) -> bool | None:
        """True / False when judged either way, None when not shown or not judged."""
        return {HOLDS: True, DOES_NOT_HOLD: False}.get(self.status)

    def line(self) -> str:
        return f"[{self.status}] {self.claim}: {self.evidence}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["context"] = dict(self.context)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        diff = data.get("difference")
        return cls(
            claim=data["claim"],
            status=data["status"],
            evidence=data["evidence"],
            difference=None if diff is None else Estimate(**diff),
            context=dict(data.get("context") or {}),
            scale=float(data.get("scale", 1.0)),
            digits=int(data.get("digits", 2)),
            unit=str(data.get("unit", "")),
        )


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> list[float]:
    """``a[s] - b[s]`` for every seed ``s`` both have with finite values, in seed order."""
    out = []
    for seed in sorted(set(a) & set(b)):
        d = float(a[seed]) - float(b[seed])
        if math.isfinite(d):
            out.append(d)
    return out


def judge(differences: Sequence[float]) -> tuple[str, Estimate, str | None]:
    """``(status, estimate, reason not judged)`` of a claim that the mean difference is > 0."""
    est = mean_ci(differences)
    if est.n < 2:
        return NOT_JUDGED, est, f"{est.n} paired seed(s); an interval needs two or more"
    if est.low > 0:
        return HOLDS, est, None
    if est.high < 0:
        return DOES_NOT_HOLD, est, None
    return NOT_SHOWN, est, None


def verdict_from_differences(
    claim: str,
    differences: Mapping[int, float],
    evidence: str,
    scale: float = 1.0,
    unit: str = "",
    digits: int = 2,
    context: Mapping[str, Any] | None = None,
    missing: str | None = None,
) -> Verdict:
    """The claim that per-seed ``differences`` are above zero; ``evidence`` leads the text."""
    if missing:
        status, est, reason = NOT_JUDGED, mean_ci([]), missing
    else:
        values = [v for _, v in sorted(differences.items()) if math.isfinite(v)]
        status, est, reason = judge(values)
    text = f"{evidence}; paired difference {est.format(digits, scale)}{unit} (n = {est.n})"
    if reason:
        text += f"; not judged: {reason}"
    return Verdict(claim, status, text, est, dict(context or {}), scale, digits, unit)


def paired_verdict(
    claim: str,
    a: Mapping[int, float],
    b: Mapping[int, float],
    labels: tuple[str, str],
    scale: float = 1.0,
    unit: str = "",
    digits: int = 2,
    context: Mapping[str, Any] | None = None,
) -> Verdict:
    """The claim that ``a > b`` (paired by seed), with both cells and the difference."""
    missing = [name for name, cell in zip(labels, (a, b), strict=True) if not cell]
    cells = ", ".join(
        f"{name} {mean_ci(list(cell.values())).format(digits, scale)}{unit}"
        for name, cell in zip(labels, (a, b), strict=True)
    )
    return verdict_from_differences(
        claim,
        {s: float(a[s]) - float(b[s]) for s in sorted(set(a) & set(b))},
        cells,
        scale,
        unit,
        digits,
        context,
        missing=f"no finished runs for {' and '.join(missing)}" if missing else None,
    )


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` against ``xs`` (NaN with fewer than two points)."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if not math.isnan(y)]
    if len(pairs) < 2:
        return float("nan")
    x, y = np.asarray(pairs, float).T
    return float(np.polyfit(x, y, 1)[0])


def write_verdicts(
    verdicts: Sequence[Verdict], path: str | Path, context: Mapping[str, Any] | None = None
) -> str:
    """Write the verdicts as a Markdown list (``path``) and as JSON beside it (for the claims
    page, with ``context`` merged into each); return the Markdown."""
    path = Path(path)
    text = "\n".join(f"- {v.line()}" for v in verdicts) + "\n"
    atomic_write(path, text)
    rows = [{**v.to_dict(), "context": {**(context or {}), **v.context}} for v in verdicts]
    atomic_write(path.with_name(VERDICTS_JSON), json.dumps(rows, indent=1))
    return text
