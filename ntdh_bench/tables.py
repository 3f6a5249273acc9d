"""Result tables written as Markdown, CSV and LaTeX from one description.

A :class:`Table` is a header and rows of cells; a cell is text, a number, or an
:class:`~ntdh_bench.stats.Estimate` (mean and 95% interval over seeds). Markdown and LaTeX show
``mean ± half-width``; CSV gives each estimate column as three machine-readable columns
(``<name>_mean``, ``<name>_ci95``, ``<name>_n``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ntdh_bench.stats import Estimate
from ntdh_core.io import atomic_write

Cell = str | float | int | Estimate | None


@dataclass
class Table:
    """A titled grid; ``scale`` and ``digits`` control how estimates are printed."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[Cell]] = field(default_factory=list)
    digits: int | Sequence[int] = 3
    scale: float = 1.0
    caption: str = ""

    def add_row(self, *cells: Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.columns)} columns")
        self.rows.append(cells)

    def _digits(self, column: int) -> int:
        return self.digits if isinstance(self.digits, int) else self.digits[column]

    def _text(self, cell: Cell, column: int) -> str:
        digits = self._digits(column)
        if isinstance(cell, Estimate):
            return cell.format(digits, self.scale)
        if cell is None:
            return ""
        if isinstance(cell, float):
            return "n/a" if math.isnan(cell) else f"{cell:.{digits}f}"
        return str(cell)

    def _row_text(self, row: Sequence[Cell]) -> list[str]:
        return [self._text(c, i) for i, c in enumerate(row)]

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(self._row_text(row)) + " |" for row in self.rows]
        if self.caption:
            lines += ["", self.caption]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        estimate_cols = {
            i
            for i in range(len(self.columns))
            if any(isinstance(r[i], Estimate) for r in self.rows)
        }
        header: list[str] = []
        for i, name in enumerate(self.columns):
            header += (
                [f"{name}_mean", f"{name}_ci95", f"{name}_n"] if i in estimate_cols else [name]
            )
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for row in self.rows:
            out: list[object] = []
            for i, cell in enumerate(row):
                if i in estimate_cols:
                    est = cell if isinstance(cell, Estimate) else Estimate(math.nan, math.nan, 0)
                    out += [_num(est.mean * self.scale), _num(est.half_width * self.scale), est.n]
                else:
                    out.append("" if cell is None else cell)
            writer.writerow(out)
        return buf.getvalue()

    def to_latex(self) -> str:
        def tex(text: str) -> str:
            text = text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
            return text.replace("±", r"$\pm$")

        spec = "l" + "c" * (len(self.columns) - 1)
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{tex(self.caption or self.title)}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(tex(c) for c in self.columns) + r" \\",
            r"\midrule",
        ]
        lines += [" & ".join(tex(t) for t in self._row_text(row)) + r" \\" for row in self.rows]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def write(self, directory: str | Path, stem: str) -> list[Path]:
        """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex``; return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for suffix, text in (
            ("md", self.to_markdown()),
            ("csv", self.to_csv()),
            ("tex", self.to_latex()),
        ):
            paths.append(atomic_write(directory / f"{stem}.{suffix}", text))
        return paths


def _num(x: float) -> str:
    return "" if math.isnan(x) else repr(round(x, 10))
