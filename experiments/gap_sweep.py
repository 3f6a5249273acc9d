"""Fig. 3: cross-modal KD against the domain gap on the synthetic data.

For each gap in {0, 0.2, ..., 1.0} and each seed: the teacher on ``xa``, the no-KD student and
the KD student on ``xb``; their test accuracy and the TCJSD and NCJSD between teacher and KD
student. Writes ``results/fig3/fig3.{md,csv,tex,png}`` and ``verdicts.md``.

    python experiments/gap_sweep.py                # quick default (make fig3)
    python experiments/gap_sweep.py --full         # the longer schedule
    python experiments/gap_sweep.py --seeds 5 --set student.lam=0.7
"""

from __future__ import annotations

from typing import ClassVar

import matplotlib.pyplot as plt

from experiments.base import DatasetExperiment
from ntdh_bench.claims import Verdict, slope, verdict_from_differences
from ntdh_bench.config import run_config
from ntdh_bench.experiment import RunSpec
from ntdh_bench.plotting import plot_estimates
from ntdh_bench.report import Records, pct
from ntdh_bench.stats import Estimate
from ntdh_bench.tables import Table


class GapSweep(DatasetExperiment):
    """Fig. 3: accuracy of teacher, no-KD and KD student, and TCJSD / NCJSD, against the gap."""

    name = "fig3"
    paper_name = "fig3"
    description = __doc__
    datasets: ClassVar[tuple[str, ...]] = ("synthetic",)
    grid_flags: ClassVar[tuple[str, ...]] = ("gaps",)

    def gaps(self) -> list[float]:
        return [float(g) for g in (self.args.gaps or self.config["gaps"])]

    def specs(self) -> list[RunSpec]:
        return [
            RunSpec(run_config(self.config, role, seed, self.data(gap, seed)))
            for seed in range(self.args.seeds)
            for gap in self.gaps()
            for role in ("teacher", "student", "kd")
        ]

    def _series(self, records: Records, role: str, metric: str) -> list[Estimate]:
        return [records.where(role=role, dataset__gap=g).estimate(metric) for g in self.gaps()]

    def report(self, records: Records) -> None:
        teacher = self._series(records, "teacher", "teacher/test/acc")
        no_kd = self._series(records, "student", "test/acc")
        kd = self._series(records, "kd", "test/acc")
        tcjsd = self._series(records, "kd", "test/tcjsd")
        ncjsd = self._series(records, "kd", "test/ncjsd")
        table = Table(
            title="Fig. 3: cross-modal KD against the domain gap (synthetic data)",
            columns=[
                "gap",
                "teacher acc (%)",
                "no-KD student acc (%)",
                "KD student acc (%)",
                "TCJSD",
                "NCJSD",
            ],
            digits=[1, 1, 1, 1, 4, 4],
            caption="Mean ± 95% interval over seeds (n per cell shown in the CSV). "
            "Divergences between teacher and KD student on the test split, "
            f"T = {self.config['student'].get('monitor_T', 1.0):g}. "
            f"Protocol: {self.args.protocol}.",
        )
        for i, gap in enumerate(self.gaps()):
            table.add_row(
                f"{gap:.1f}", pct(teacher[i]), pct(no_kd[i]), pct(kd[i]), tcjsd[i], ncjsd[i]
            )
        table.write(self.results_dir, "fig3")
        self._figure(teacher, no_kd, kd, tcjsd, ncjsd)
        print(table.to_markdown())
        print(self.write_verdicts(self.verdicts(records), artefact="Fig. 3", dataset="synthetic"))
        print(f"written to {self.results_dir}/ (fig3.md, fig3.csv, fig3.tex, fig3.png)")

    def _figure(self, teacher, no_kd, kd, tcjsd, ncjsd) -> None:
        gaps = self.gaps()
        fig, (acc_ax, div_ax) = plt.subplots(1, 2, figsize=(10, 4))
        plot_estimates(acc_ax, gaps, teacher, "teacher (xa)", scale=100)
        plot_estimates(acc_ax, gaps, no_kd, "student, no KD (xb)", scale=100, linestyle="--")
        plot_estimates(acc_ax, gaps, kd, "student, KD (xb)", scale=100)
        acc_ax.set(xlabel="domain gap γ", ylabel="test accuracy (%)", title="(a) accuracy")
        acc_ax.legend()
        plot_estimates(div_ax, gaps, tcjsd, "TCJSD (target)")
        plot_estimates(div_ax, gaps, ncjsd, "NCJSD (non-target)")
        div_ax.set(
            xlabel="domain gap γ",
            ylabel="JSD teacher vs KD student (nats)",
            title="(b) divergences",
        )
        div_ax.legend()
        fig.suptitle("NTDH on synthetic data: mean ± 95% interval over seeds")
        self.publish(fig, "fig3")

    def _slopes(self, records: Records, role: str, metric: str) -> dict[int, float]:
        """Per seed: the least-squares slope of ``metric`` against the gap."""
        by_gap = [records.where(role=role, dataset__gap=g).values(metric) for g in self.gaps()]
        seeds = set.intersection(*(set(v) for v in by_gap)) if by_gap else set()
        return {s: slope(self.gaps(), [v[s] for v in by_gap]) for s in sorted(seeds)}

    def verdicts(self, records: Records) -> list[Verdict]:
        """Per seed, slopes over the gaps; the claims hold when their paired interval does."""
        gaps = self.gaps()
        if len(set(gaps)) < 2:
            return [Verdict("the claims of Fig. 3", "not judged", "they compare gaps; sweep two")]
        nc = self._slopes(records, "kd", "test/ncjsd")
        tc = self._slopes(records, "kd", "test/tcjsd")
        kd_acc = self._slopes(records, "kd", "test/acc")
        no_kd_acc = self._slopes(records, "student", "test/acc")
        # > 0 when the KD gain (KD - no-KD accuracy) falls as the gap grows
        gain = {s: no_kd_acc[s] - kd_acc[s] for s in set(kd_acc) & set(no_kd_acc)}
        mean = lambda d: sum(d.values()) / len(d) if d else float("nan")  # noqa: E731
        return [
            verdict_from_differences(
                "NCJSD grows faster than TCJSD as the gap grows",
                {s: nc[s] - tc[s] for s in set(nc) & set(tc)},
                f"slope per unit gap: NCJSD {mean(nc):.4f}, TCJSD {mean(tc):.4f} "
                f"(gaps {gaps[0]:g} to {gaps[-1]:g}); difference NCJSD - TCJSD",
                digits=4,
                missing=None if nc and tc else "no KD runs with divergences",
            ),
            verdict_from_differences(
                "the KD student's gain over the no-KD student falls as the gap grows",
                gain,
                f"slope of KD - no-KD accuracy per unit gap "
                f"{100 * (mean(kd_acc) - mean(no_kd_acc)):.1f} points; difference is its "
                "negative",
                scale=100,
                unit=" points",
                digits=1,
                missing=None if gain else "no paired KD and no-KD runs",
            ),
        ]


if __name__ == "__main__":
    GapSweep.main()
