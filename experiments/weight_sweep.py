"""Fig. 6 (Fig. 7 on other datasets): the weight adjustment method of Sec. IV-C.

The student is distilled with the decoupled loss ``T^2 (alpha * TCKL + beta * NCKL)``
(``ntdh_bench.distillers.decoupled``): alpha weighs the target-class part, beta the
non-target part. Panel (a) sweeps alpha with beta fixed, panel (b) beta with alpha fixed, across
the domain gaps (synthetic data) and seeds, against the no-KD student. The claim checked: a
larger beta hurts at a large gap (the non-target divergence decides whether KD helps). Writes
``results/fig6/fig6.{md,csv,tex,png}`` and ``verdicts.md`` (``results/weight_sweep_<dataset>/``
for other datasets).

The grids come from the ``weight_sweep`` section of ``experiments/configs/<dataset>.yaml``;
the quick default runs a subset, ``--full`` the paper's grid ({0, 0.5, 1, 2, 4, 8} at six gaps)
and schedule.

    python experiments/weight_sweep.py --dataset synthetic            # quick (make fig6)
    python experiments/weight_sweep.py --dataset synthetic --full --seeds 5
    python experiments/weight_sweep.py --dataset synthetic --values 0 1 8 --gaps 1.0
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import matplotlib.pyplot as plt

from ntdh_bench.claims import Verdict, slope, write_verdicts
from ntdh_bench.experiment import Experiment, RunSpec, run_config
from ntdh_bench.plotting import plot_estimates, save_figure
from ntdh_bench.results import config_get
from ntdh_bench.stats import Estimate, mean_ci
from ntdh_bench.sweeps import pct, sweep_config
from ntdh_bench.tables import Table

DEFAULT_VALUES = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
PANELS = ("alpha", "beta")  # the weight each panel sweeps; the other is fixed


class WeightSweep(Experiment):
    """Fig. 6: accuracy of the decoupled-KD student as alpha or beta grows, per domain gap."""

    name = "fig6"
    description = __doc__

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset", default="synthetic", help="dataset with a config")
        parser.set_defaults(seeds=2)  # the quick default; --seeds 5 --full for the paper's size
        parser.add_argument(
            "--values", type=float, nargs="+", default=None, help="weights to sweep"
        )
        parser.add_argument(
            "--gaps", type=float, nargs="+", default=None, help="domain gaps (synthetic data)"
        )

    def __init__(self, args: argparse.Namespace) -> None:
        self.dataset = args.dataset
        if self.dataset != "synthetic":
            self.name = f"weight_sweep_{self.dataset}"
        super().__init__(args)
        self.config = sweep_config(self, self.dataset, "weight_sweep")
        section = self.config.get("weight_sweep", {})
        self.values = [float(v) for v in (args.values or section.get("values", DEFAULT_VALUES))]
        self.fixed = float(section.get("fixed", 1.0))
        gaps = args.gaps or section.get("gaps")
        self.gaps: list[float | None] = [float(g) for g in gaps] if gaps else [None]
        self.distiller = dict(section.get("distiller", {"name": "decoupled"}))

    # --- the grid ----------------------------------------------------------------------
    def weight_pairs(self) -> list[tuple[float, float]]:
        """``(alpha, beta)`` of every KD run: both panels, the shared point once."""
        pairs = [(v, self.fixed) for v in self.values] + [(self.fixed, v) for v in self.values]
        return list(dict.fromkeys(pairs))

    def _data(self, gap: float | None, seed: int) -> dict[str, Any]:
        return {} if gap is None else {"gap": gap, "data_seed": seed}

    def specs(self) -> list[RunSpec]:
        specs = []
        for seed in range(self.args.seeds):
            for gap in self.gaps:
                data = self._data(gap, seed)
                specs.append(RunSpec(run_config(self.config, "teacher", seed, data)))
                specs.append(RunSpec(run_config(self.config, "student", seed, data)))
                for alpha, beta in self.weight_pairs():
                    distiller = {**self.distiller, "alpha": alpha, "beta": beta}
                    specs.append(RunSpec(run_config(self.config, "kd", seed, data, distiller)))
        return specs

    # --- the report --------------------------------------------------------------------
    def _metric_name(self, records: list[dict[str, Any]]) -> str:
        return "test/miou" if any("test/miou" in r["metrics"] for r in records) else "test/acc"

    def _cell(
        self,
        records: list[dict[str, Any]],
        metric: str,
        gap: float | None,
        role: str,
        alpha: float | None = None,
        beta: float | None = None,
    ) -> Estimate:
        values = []
        for record in records:
            config = record["config"]
            if config["role"] != role or metric not in record["metrics"]:
                continue
            if gap is not None and config_get(config, "dataset.gap") != gap:
                continue
            if role == "kd" and (
                config["distiller"].get("alpha") != alpha or config["distiller"].get("beta") != beta
            ):
                continue
            values.append(record["metrics"][metric])
        return mean_ci(values)

    def report(self, records: list[dict[str, Any]]) -> None:
        metric = self._metric_name(records)
        label = "mIoU" if metric == "test/miou" else "acc"
        table = Table(
            title=f"Fig. 6: weight adjustment, alpha * TCKL + beta * NCKL ({self.dataset})",
            columns=[
                "gap",
                "alpha",
                "beta",
                f"KD student {label} (%)",
                f"no-KD student {label} (%)",
                "TCJSD",
                "NCJSD",
            ],
            digits=[1, 1, 1, 1, 1, 4, 4],
            caption="Mean ± 95% interval over seeds (n per cell in the CSV); divergences "
            "between teacher and KD student on the test split, T = 1. "
            f"Loss T^2 (alpha TCKL + beta NCKL), {self._distiller_text()}.",
        )
        for gap in self.gaps:
            no_kd = pct(self._cell(records, metric, gap, "student"))
            for alpha, beta in self.weight_pairs():
                table.add_row(
                    "-" if gap is None else f"{gap:.1f}",
                    f"{alpha:g}",
                    f"{beta:g}",
                    pct(self._cell(records, metric, gap, "kd", alpha, beta)),
                    no_kd,
                    self._cell(records, "test/tcjsd", gap, "kd", alpha, beta),
                    self._cell(records, "test/ncjsd", gap, "kd", alpha, beta),
                )
        stem = self.name if self.dataset == "synthetic" else "weight_sweep"
        table.write(self.results_dir, stem)
        self._figure(records, metric, label, stem)
        print(table.to_markdown())
        print(write_verdicts(self._verdicts(records, metric), self.results_dir / "verdicts.md"))
        print(f"written to {self.results_dir}/ ({stem}.md, .csv, .tex, .png)")

    def _distiller_text(self) -> str:
        return ", ".join(f"{k} = {v}" for k, v in self.distiller.items() if k != "name")

    def _series(
        self, records: list[dict[str, Any]], metric: str, swept: str, value: float
    ) -> list[Estimate]:
        """One curve of a panel: ``swept = value`` (the other weight fixed) over the gaps."""
        alpha, beta = (value, self.fixed) if swept == "alpha" else (self.fixed, value)
        return [self._cell(records, metric, gap, "kd", alpha, beta) for gap in self.gaps]

    def _figure(self, records: list[dict[str, Any]], metric: str, label: str, stem: str) -> None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        by_gap = self.gaps != [None]
        no_kd = [self._cell(records, metric, gap, "student") for gap in self.gaps]
        for ax, swept, tag in zip(axes, PANELS, "ab", strict=True):
            symbol, fixed_symbol = ("α", "β") if swept == "alpha" else ("β", "α")
            if by_gap:
                xs = [float(g) for g in self.gaps]
                for value in self.values:
                    series = self._series(records, metric, swept, value)
                    plot_estimates(ax, xs, series, f"{symbol} = {value:g}", scale=100)
                no_kd_means = [100 * e.mean for e in no_kd]  # its interval is in the table
                ax.plot(xs, no_kd_means, linestyle="--", color="k", label="no KD")
                ax.set_xlabel("domain gap γ")
            else:
                series = [self._series(records, metric, swept, v)[0] for v in self.values]
                plot_estimates(ax, self.values, series, "decoupled KD", scale=100)
                ax.axhline(no_kd[0].mean * 100, linestyle="--", color="k", label="no KD")
                ax.set_xlabel(symbol)
            ax.set_title(f"({tag}) {symbol} swept, {fixed_symbol} = {self.fixed:g}")
            ax.legend(fontsize=8)
        axes[0].set_ylabel(f"student test {label} (%)")
        fig.suptitle(
            f"Weight adjustment on {self.dataset}: mean ± 95% interval over seeds "
            f"({self._distiller_text()})"
        )
        save_figure(fig, self.results_dir / f"{stem}.png")

    def _verdicts(self, records: list[dict[str, Any]], metric: str) -> list[Verdict]:
        gap = self.gaps[-1] if None in self.gaps else max(self.gaps)
        where = "" if gap is None else f" at gap {gap:g}"
        unit = 100.0
        beta = [self._cell(records, metric, gap, "kd", self.fixed, v) for v in self.values]
        alpha = [self._cell(records, metric, gap, "kd", v, self.fixed) for v in self.values]
        no_kd = self._cell(records, metric, gap, "student")
        lo, hi = self.values[0], self.values[-1]
        beta_slope = slope(self.values, [e.mean for e in beta])
        beta_range = _spread(beta)
        alpha_range = _spread(alpha)

        def fmt(e: Estimate) -> str:
            return pct(e).format(1)

        return [
            Verdict(
                f"larger beta hurts{where}",
                beta[-1].mean < beta[0].mean and beta_slope < 0,
                f"beta = {lo:g}: {fmt(beta[0])}%, beta = {hi:g}: {fmt(beta[-1])}% "
                f"(alpha = {self.fixed:g}; slope {unit * beta_slope:.2f} points per unit beta; "
                f"no-KD student {fmt(no_kd)}%)",
            ),
            Verdict(
                f"beta moves the student more than alpha does{where}",
                beta_range > alpha_range,
                f"accuracy spans {unit * beta_range:.1f} points over beta in "
                f"[{lo:g}, {hi:g}] and {unit * alpha_range:.1f} points over alpha "
                f"(alpha = {lo:g}: {fmt(alpha[0])}%, alpha = {hi:g}: {fmt(alpha[-1])}%)",
            ),
        ]


def _spread(series: list[Estimate]) -> float:
    means = [e.mean for e in series if not math.isnan(e.mean)]
    return max(means) - min(means) if means else math.nan


if __name__ == "__main__":
    WeightSweep.main()
