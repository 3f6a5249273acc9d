"""Fig. 6 (Fig. 7 on other datasets): the weight adjustment method of Sec. IV-C.

The student is distilled with the decoupled loss ``T^2 (alpha * TCKL + beta * NCKL)``
(``ntdh_bench.distillers.decoupled``): alpha weighs the target-class part, beta the
non-target part. Panel (a) sweeps alpha with beta fixed, panel (b) beta with alpha fixed,
across the domain gaps (synthetic data) and seeds, against the no-KD student. Claims checked
(paired over seeds, at the largest gap): a larger beta hurts; beta moves the student more
than alpha; plain KD (alpha = beta = fixed) falls below the no-KD student (negative
transfer). Writes ``results/fig6/fig6.{md,csv,tex,png}`` and ``verdicts.md``
(``results/weight_sweep_<dataset>/`` for other datasets).

The grids come from the ``weight_sweep`` section of ``experiments/configs/<dataset>.yaml``;
the quick default runs a subset, ``--full`` the paper's grid ({0, 0.5, 1, 2, 4, 8} at six gaps).

    python experiments/weight_sweep.py --dataset synthetic            # quick (make fig6)
    python experiments/weight_sweep.py --dataset ravdess --gpus 4
    python experiments/weight_sweep.py --dataset synthetic --values 0 1 8 --gaps 1.0
"""

from __future__ import annotations

import argparse
from typing import Any, ClassVar

import matplotlib.pyplot as plt

from experiments.base import DatasetExperiment
from ntdh_bench.claims import Verdict, paired_verdict, verdict_from_differences
from ntdh_bench.config import run_config
from ntdh_bench.experiment import RunSpec
from ntdh_bench.plotting import plot_estimates
from ntdh_bench.report import Records, metric_label
from ntdh_bench.tables import Table

DEFAULT_VALUES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
PANELS = ("alpha", "beta")  # the weight each panel sweeps; the other is fixed


class WeightSweep(DatasetExperiment):
    """Fig. 6: accuracy of the decoupled-KD student as alpha or beta grows, per domain gap."""

    paper_name = "fig6"
    section = "weight_sweep"
    description = __doc__
    grid_flags: ClassVar[tuple[str, ...]] = ("gaps",)

    def variant_name(self, args: argparse.Namespace) -> str:
        return f"weight_sweep_{args.dataset}"

    @classmethod
    def add_experiment_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--values", type=float, nargs="+", default=None, help="weights to sweep"
        )

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.values = [float(v) for v in (args.values or self.grid.get("values", DEFAULT_VALUES))]
        self.fixed = float(self.grid.get("fixed", 1.0))
        self.distiller = dict(self.grid.get("distiller", {"name": "decoupled"}))

    # --- the grid ----------------------------------------------------------------------
    def weight_pairs(self) -> list[tuple[float, float]]:
        """``(alpha, beta)`` of every KD run: both panels, the shared point once, and plain
        decoupled KD (both weights fixed), the reference of the negative-transfer claim."""
        pairs = [(v, self.fixed) for v in self.values] + [(self.fixed, v) for v in self.values]
        pairs.append((self.fixed, self.fixed))
        return list(dict.fromkeys(pairs))

    def specs(self) -> list[RunSpec]:
        specs = []
        for seed in range(self.args.seeds):
            for gap in self.gaps():
                data = self.data(gap, seed)
                specs.append(RunSpec(run_config(self.config, "teacher", seed, data)))
                specs.append(RunSpec(run_config(self.config, "student", seed, data)))
                for alpha, beta in self.weight_pairs():
                    distiller = {**self.distiller, "alpha": alpha, "beta": beta}
                    specs.append(RunSpec(run_config(self.config, "kd", seed, data, distiller)))
        return specs

    # --- reading records ---------------------------------------------------------------
    @staticmethod
    def _at(records: Records, gap: float | None) -> Records:
        return records if gap is None else records.where(dataset__gap=gap)

    def _kd(self, records: Records, gap: float | None, alpha: float, beta: float) -> Records:
        return self._at(records, gap).where(role="kd", distiller__alpha=alpha, distiller__beta=beta)

    def _no_kd(self, records: Records, gap: float | None) -> Records:
        return self._at(records, gap).where(role="student")

    # --- the report --------------------------------------------------------------------
    def report(self, records: Records) -> None:
        metric = records.metric_name()
        label = metric_label(metric)
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
            "between teacher and KD student on the test split. "
            f"Loss T^2 (alpha TCKL + beta NCKL), {self._distiller_text()}. "
            f"Protocol: {self.args.protocol}.",
        )
        for gap in self.gaps():
            no_kd = self._no_kd(records, gap).estimate(metric, percent=True)
            for alpha, beta in self.weight_pairs():
                kd = self._kd(records, gap, alpha, beta)
                table.add_row(
                    "-" if gap is None else f"{gap:.1f}",
                    f"{alpha:g}",
                    f"{beta:g}",
                    kd.estimate(metric, percent=True),
                    no_kd,
                    kd.estimate("test/tcjsd"),
                    kd.estimate("test/ncjsd"),
                )
        stem = self.name if self.dataset == "synthetic" else "weight_sweep"
        table.write(self.results_dir, stem)
        self._figure(records, metric, label, stem)
        print(table.to_markdown())
        verdicts = self.verdicts(records, metric)
        print(self.write_verdicts(verdicts, artefact="Fig. 6/7", dataset=self.dataset))
        print(f"written to {self.results_dir}/ ({stem}.md, .csv, .tex, .png)")

    def _distiller_text(self) -> str:
        return ", ".join(f"{k} = {v}" for k, v in self.distiller.items() if k != "name")

    def _figure(self, records: Records, metric: str, label: str, stem: str) -> None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        gaps = self.gaps()
        by_gap = gaps != [None]
        no_kd = [self._no_kd(records, g).estimate(metric) for g in gaps]
        for ax, swept, tag in zip(axes, PANELS, "ab", strict=True):
            symbol, fixed_symbol = ("α", "β") if swept == "alpha" else ("β", "α")

            def series(value: float, swept: str = swept) -> list[Any]:
                a, b = (value, self.fixed) if swept == "alpha" else (self.fixed, value)
                return [self._kd(records, g, a, b).estimate(metric) for g in gaps]

            if by_gap:
                xs = [float(g) for g in gaps]
                for value in self.values:
                    plot_estimates(ax, xs, series(value), f"{symbol} = {value:g}", scale=100)
                ax.plot(xs, [100 * e.mean for e in no_kd], linestyle="--", color="k", label="no KD")
                ax.set_xlabel("domain gap γ")
            else:
                points = [series(v)[0] for v in self.values]
                plot_estimates(ax, self.values, points, "decoupled KD", scale=100)
                ax.axhline(no_kd[0].mean * 100, linestyle="--", color="k", label="no KD")
                ax.set_xlabel(symbol)
            ax.set_title(f"({tag}) {symbol} swept, {fixed_symbol} = {self.fixed:g}")
            ax.legend(fontsize=8)
        axes[0].set_ylabel(f"student test {label} (%)")
        fig.suptitle(
            f"Weight adjustment on {self.dataset}: mean ± 95% interval over seeds "
            f"({self._distiller_text()}, protocol {self.args.protocol})"
        )
        self.publish(fig, stem)

    def verdicts(self, records: Records, metric: str) -> list[Verdict]:
        """Paired over seeds at the largest gap: beta hurts, beta matters more than alpha,
        and KD falls below no KD (negative transfer)."""
        label = metric_label(metric)
        gaps = self.gaps()
        gap = None if gaps == [None] else max(g for g in gaps if g is not None)
        where = "" if gap is None else f" at gap {gap:g}"
        lo, hi = self.values[0], self.values[-1]
        fixed = self.fixed
        beta_lo = self._kd(records, gap, fixed, lo).values(metric)
        beta_hi = self._kd(records, gap, fixed, hi).values(metric)
        alpha_lo = self._kd(records, gap, lo, fixed).values(metric)
        alpha_hi = self._kd(records, gap, hi, fixed).values(metric)
        plain = self._kd(records, gap, fixed, fixed).values(metric)
        no_kd = self._no_kd(records, gap).values(metric)
        spread = {
            s: abs(beta_hi[s] - beta_lo[s]) - abs(alpha_hi[s] - alpha_lo[s])
            for s in set(beta_lo) & set(beta_hi) & set(alpha_lo) & set(alpha_hi)
        }
        pts = dict(scale=100, unit="%", digits=1)
        return [
            paired_verdict(
                f"larger beta hurts{where}",
                beta_lo,
                beta_hi,
                (f"beta = {lo:g}", f"beta = {hi:g}"),
                **pts,
            ),
            verdict_from_differences(
                f"beta moves the student more than alpha does{where}",
                spread,
                f"|{label}(beta = {hi:g}) - {label}(beta = {lo:g})| minus the same for alpha",
                scale=100,
                unit=" points",
                digits=1,
                missing=None if spread else "a weight cell has no finished runs",
            ),
            paired_verdict(
                f"KD falls below the no-KD student{where} (negative transfer)",
                no_kd,
                plain,
                ("no KD", f"KD (alpha = beta = {fixed:g})"),
                **pts,
            ),
        ]


if __name__ == "__main__":
    WeightSweep.main()
