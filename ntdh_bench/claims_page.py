"""One page of claims: every verdict of every finished experiment, in ``results/CLAIMS.md``.

Each experiment writes ``verdicts.json`` beside its tables
(:func:`ntdh_bench.claims.write_verdicts`); this collects them into one table (claim, paper
artefact, dataset, protocol, reading, seeds, paired difference with its 95% interval, verdict),
counts the verdicts, and draws one panel per experiment: the paired differences with their
intervals against zero, coloured by verdict.
``ntdh claims`` or ``make claims`` writes it; it is the suite's headline output.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt

from ntdh_bench.claims import STATUSES, VERDICTS_JSON, Verdict
from ntdh_bench.plotting import save_figure
from ntdh_core.io import atomic_write

log = logging.getLogger(__name__)

COLOURS = {"holds": "tab:green", "does not hold": "tab:red", "not shown": "tab:grey"}


def collect(results_dir: str | Path) -> dict[str, list[Verdict]]:
    """``{experiment folder: verdicts}`` from every ``<results_dir>/*/verdicts.json``."""
    found = {}
    for path in sorted(Path(results_dir).glob(f"*/{VERDICTS_JSON}")):
        try:
            found[path.parent.name] = [Verdict.from_dict(v) for v in json.loads(path.read_text())]
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s is not a verdicts file (%s); left out", path, err)
    return found


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def _panel(experiment: str, verdicts: Sequence[Verdict], folder: Path) -> str | None:
    judged = [v for v in verdicts if v.difference is not None and not math.isnan(v.difference.mean)]
    if not judged:
        return None
    height = 0.35 * len(judged) + 1.2
    fig, ax = plt.subplots(figsize=(9, height))
    for row, v in enumerate(reversed(judged)):
        d = v.difference
        half = 0.0 if math.isnan(d.half_width) else d.half_width
        colour = COLOURS.get(v.status, "k")  # differences in their own unit, shown as reported
        ax.errorbar(d.mean * v.scale, row, xerr=half * v.scale, fmt="o", color=colour, capsize=3)
    ax.axvline(0.0, color="k", linewidth=0.8)
    ax.set_yticks(range(len(judged)))
    ax.set_yticklabels([v.claim[:70] for v in reversed(judged)], fontsize=7)
    ax.set_xlabel("paired difference over seeds (claimed direction > 0), 95% interval")
    ax.set_title(f"{experiment}: green holds, red does not hold, grey not shown")
    save_figure(fig, folder / f"{experiment}.png")
    return f"claims/{experiment}.png"


def write_claims_page(results_dir: str | Path = "results") -> Path:
    """Write ``<results_dir>/CLAIMS.md`` and its panels; return the page's path."""
    results_dir = Path(results_dir)
    found = collect(results_dir)
    counts = Counter(v.status for verdicts in found.values() for v in verdicts)
    lines = ["# Claims of the paper, as this suite judges them", ""]
    if not found:
        lines.append(
            f"No experiment under {results_dir}/ has written verdicts yet: run one "
            "(e.g. `make demo`), then `ntdh claims` again."
        )
    else:
        summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
        lines += [
            f"{sum(counts.values())} verdicts from {len(found)} experiments: {summary}.",
            "",
            "A claim holds when the 95% interval of its paired difference over seeds (same "
            "seed, data and teacher) lies on the claimed side of zero; it does not hold when it "
            "lies on the other side, and is not shown when the interval contains zero.",
            "",
            "| claim | artefact | dataset | protocol | reading | seeds | paired difference | "
            "verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        panels = []
        for experiment, verdicts in found.items():
            for v in verdicts:
                c = v.context
                n = v.difference.n if v.difference is not None else 0
                lines.append(
                    "| "
                    + " | ".join(
                        _cell(x)
                        for x in (
                            v.claim,
                            c.get("artefact", experiment),
                            c.get("dataset", "-"),
                            c.get("protocol", "-"),
                            c.get("reading", "-"),
                            n,
                            v.difference_text(),
                            f"**{v.status}**",
                        )
                    )
                    + " |"
                )
            panel = _panel(experiment, verdicts, results_dir / "claims")
            if panel:
                panels.append(panel)
        lines += ["", "## Evidence", ""]
        for experiment, verdicts in found.items():
            lines += [f"### {experiment}", ""] + [f"- {v.line()}" for v in verdicts] + [""]
        lines += ["## Panels", ""] + [f"![{p}]({p})" for p in panels]
    path = results_dir / "CLAIMS.md"
    atomic_write(path, "\n".join(lines) + "\n")
    return path
