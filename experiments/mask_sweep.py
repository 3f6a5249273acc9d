"""Fig. 8 (Figs. 9 and 11 on other datasets) and Fig. 13: the masking method of Sec. IV-C.

``--mask feature`` (Algorithm 1): the teacher's input features are scored by the non-target
divergence they carry and the top (``true``), bottom (``false``) or a random set (``random``)
of them, at each mask ratio, are zeroed; the teacher is retrained on the masked input (the
config's ``retrain_teacher``), then distilled into the student. ``--mask sample``
(Algorithm 2): in every training batch the samples with the largest (``true``), smallest
(``false``) or random NCJSD are dropped from the distillation term. Each cell is a KD student,
mean ± 95% interval over seeds, beside the unmasked KD student and the no-KD student.

The claim checked: ``true`` beats ``random`` beats ``false`` at mask ratios 0.25 and 0.5 (a
ratio missing from the grid is interpolated linearly between its neighbours, and the verdict
says so). Fig. 13 (``fig13.png``): TCJSD and NCJSD between teacher and student over training,
without the mask and with the ``true`` mask at ``fig13_ratio``; the same curves are logged
to TensorBoard (``runs/``) as ``val/tcjsd`` and ``val/ncjsd``.

Writes ``results/fig8/{fig8.md,csv,tex,png, fig13.png, verdicts.md}`` for the synthetic
feature mask (``results/mask_sweep_<dataset>_<mask>/`` otherwise). The grids come from the
``mask_sweep`` section of ``experiments/configs/<dataset>.yaml``; the quick default runs the
ratios of the claim, ``--full`` the paper's 0.1 ... 0.9 and schedule.

    python experiments/mask_sweep.py --dataset synthetic                  # quick (make fig8)
    python experiments/mask_sweep.py --dataset synthetic --mask sample
    python experiments/mask_sweep.py --dataset synthetic --full --seeds 5
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ntdh_bench.callbacks import curve
from ntdh_bench.claims import Verdict, write_verdicts
from ntdh_bench.experiment import Experiment, RunSpec, run_config
from ntdh_bench.masking import MASK_KINDS, mask_count
from ntdh_bench.plotting import plot_estimates, save_figure
from ntdh_bench.results import config_get
from ntdh_bench.stats import Estimate, mean_ci
from ntdh_bench.sweeps import pct, sweep_config
from ntdh_bench.tables import Table

CLAIM_RATIOS = (0.25, 0.5)
DEFAULT_RATIOS = [0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


class MaskSweep(Experiment):
    """Fig. 8: the KD student against the mask ratio for true, false and random masks."""

    name = "fig8"
    description = __doc__

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset", default="synthetic", help="dataset with a config")
        parser.set_defaults(seeds=2)  # the quick default; --seeds 5 --full for the paper's size
        parser.add_argument(
            "--mask",
            choices=("feature", "sample"),
            default="feature",
            help="Algorithm 1 (teacher input features) or Algorithm 2 (samples per batch)",
        )
        parser.add_argument("--ratios", type=float, nargs="+", default=None, help="mask ratios")
        parser.add_argument(
            "--gaps", type=float, nargs="+", default=None, help="domain gaps (synthetic data)"
        )

    def __init__(self, args: argparse.Namespace) -> None:
        self.dataset, self.mask = args.dataset, args.mask
        if (self.dataset, self.mask) != ("synthetic", "feature"):
            self.name = f"mask_sweep_{self.dataset}_{self.mask}"
        super().__init__(args)
        self.config = sweep_config(self, self.dataset, "mask_sweep")
        section = self.config.get("mask_sweep", {})
        self.ratios = sorted(
            float(r) for r in (args.ratios or section.get("ratios", DEFAULT_RATIOS))
        )
        gaps = args.gaps or section.get("gaps")
        self.gaps: list[float | None] = [float(g) for g in gaps] if gaps else [None]
        self.mask_spec = dict(section.get(f"{self.mask}_mask", {}))
        self.fig13_ratio = float(section.get("fig13_ratio", CLAIM_RATIOS[0]))
        self.key = f"{self.mask}_mask"

    # --- the grid ----------------------------------------------------------------------
    def _data(self, gap: float | None, seed: int) -> dict[str, Any]:
        return {} if gap is None else {"gap": gap, "data_seed": seed}

    def masked_config(self, seed: int, gap: float | None, kind: str, ratio: float) -> dict:
        config = run_config(self.config, "kd", seed, self._data(gap, seed))
        config[self.key] = {**self.mask_spec, "kind": kind, "ratio": ratio}
        return config

    def specs(self) -> list[RunSpec]:
        specs = []
        for seed in range(self.args.seeds):
            for gap in self.gaps:
                data = self._data(gap, seed)
                for role in ("teacher", "student", "kd"):
                    specs.append(RunSpec(run_config(self.config, role, seed, data)))
                for ratio in self.ratios:
                    for kind in MASK_KINDS:
                        specs.append(RunSpec(self.masked_config(seed, gap, kind, ratio)))
                if self.mask == "sample":  # the released code's weighting, for reference
                    specs.append(RunSpec(self.masked_config(seed, gap, "pssm", 0.0)))
        return specs

    # --- reading records ---------------------------------------------------------------
    def _metric_name(self, records: list[dict[str, Any]]) -> str:
        return "test/miou" if any("test/miou" in r["metrics"] for r in records) else "test/acc"

    def _records(
        self,
        records: list[dict[str, Any]],
        gap: float | None,
        role: str,
        kind: str | None = None,
        ratio: float | None = None,
    ) -> list[dict[str, Any]]:
        out = []
        for record in records:
            config = record["config"]
            if config["role"] != role:
                continue
            if gap is not None and config_get(config, "dataset.gap") != gap:
                continue
            mask = config.get(self.key)
            if (kind is None) != (mask is None):
                continue
            if kind is not None and (mask["kind"] != kind or mask["ratio"] != ratio):
                continue
            out.append(record)
        return out

    def _cell(self, records, metric, gap, role, kind=None, ratio=None) -> Estimate:
        found = self._records(records, gap, role, kind, ratio)
        return mean_ci([r["metrics"][metric] for r in found if metric in r["metrics"]])

    # --- the report --------------------------------------------------------------------
    def report(self, records: list[dict[str, Any]]) -> None:
        metric = self._metric_name(records)
        label = "mIoU" if metric == "test/miou" else "acc"
        teacher_col = f"teacher {label} (%)" if self.mask == "feature" else "masked (%)"
        table = Table(
            title=f"Mask sweep ({self.mask} mask, {self.dataset})",
            columns=["gap", "mask", "ratio", f"KD student {label} (%)", teacher_col, "NCJSD"],
            digits=[1, 0, 2, 1, 1, 4],
            caption="Mean ± 95% interval over seeds (n per cell in the CSV). "
            + self._caption_detail(records),
        )
        for gap in self.gaps:
            g = "-" if gap is None else f"{gap:.1f}"
            table.add_row(
                g,
                "none (KD)",
                0.0,
                pct(self._cell(records, metric, gap, "kd")),
                pct(self._cell(records, f"teacher/{metric}", gap, "kd"))
                if self.mask == "feature"
                else 0.0,
                self._cell(records, "test/ncjsd", gap, "kd"),
            )
            table.add_row(
                g, "no KD", None, pct(self._cell(records, metric, gap, "student")), None, None
            )
            if self.mask == "sample":
                table.add_row(
                    g,
                    "pssm",
                    None,
                    pct(self._cell(records, metric, gap, "kd", "pssm", 0.0)),
                    pct(self._side_metric(records, metric, gap, "pssm", 0.0)),
                    self._cell(records, "test/ncjsd", gap, "kd", "pssm", 0.0),
                )
            for ratio in self.ratios:
                for kind in MASK_KINDS:
                    table.add_row(
                        g,
                        kind,
                        ratio,
                        pct(self._cell(records, metric, gap, "kd", kind, ratio)),
                        pct(self._side_metric(records, metric, gap, kind, ratio)),
                        self._cell(records, "test/ncjsd", gap, "kd", kind, ratio),
                    )
        stem = "fig8" if self.name == "fig8" else "mask_sweep"
        table.write(self.results_dir, stem)
        self._figure(records, metric, label, stem)
        fig13 = self._fig13(records)
        print(table.to_markdown())
        print(write_verdicts(self._verdicts(records, metric), self.results_dir / "verdicts.md"))
        written = f"{stem}.md, .csv, .tex, .png" + (f", {fig13}" if fig13 else "")
        print(f"written to {self.results_dir}/ ({written})")

    def _side_metric(self, records, metric, gap, kind, ratio) -> Estimate:
        """The masked teacher's accuracy (feature mask) or the masked fraction (sample mask)."""
        if self.mask == "feature":
            return self._cell(records, f"teacher/{metric}", gap, "kd", kind, ratio)
        found = self._records(records, gap, "kd", kind, ratio)
        fractions = [
            float(np.nanmean(c))
            for r in found
            if (c := curve(r["metrics"], "train/masked_fraction"))
        ]
        return mean_ci(fractions)

    def _caption_detail(self, records: list[dict[str, Any]]) -> str:
        spec = next((r["config"][self.key] for r in records if r["config"].get(self.key)), None)
        if self.mask == "feature":
            retrain = "retrained on" if (spec or {}).get("retrain_teacher", True) else "only fed"
            n = self._feature_count(records)
            count = ""
            if n:
                masked = ", ".join(f"{r:g}: {mask_count(r, n)}" for r in self.ratios)
                count = f"; floor(ratio * {n}) of the {n} input features are masked ({masked})"
            return (
                f"Feature mask (Algorithm 1): the teacher is {retrain} the masked input{count}; "
                f"score reading {(spec or {}).get('score', 'drop')!r}. Teacher column: the "
                "masked teacher's test accuracy."
            )
        return (
            "Sample mask (Algorithm 2): floor(ratio * n) samples of each batch of n are "
            "dropped from the distillation term; pssm weighs them by the released code's omega. "
            "Masked column: the mean fraction of samples with weight 0."
        )

    def _feature_count(self, records: list[dict[str, Any]]) -> int | None:
        return next(
            (
                int(r["config"]["dataset"]["n_features"])
                for r in records
                if "n_features" in r["config"]["dataset"]
            ),
            None,
        )

    def _figure(self, records: list[dict[str, Any]], metric: str, label: str, stem: str) -> None:
        fig, axes = plt.subplots(
            1, len(self.gaps), figsize=(5.5 * len(self.gaps), 4.2), squeeze=False
        )
        for ax, gap, tag in zip(axes[0], self.gaps, "abcdefgh", strict=False):
            for kind in MASK_KINDS:
                series = [self._cell(records, metric, gap, "kd", kind, r) for r in self.ratios]
                plot_estimates(ax, self.ratios, series, f"{kind} mask", scale=100)
            references = [
                ("KD, no mask", "-.", self._cell(records, metric, gap, "kd")),
                ("no KD", ":", self._cell(records, metric, gap, "student")),
            ]
            if self.mask == "sample":
                pssm = self._cell(records, metric, gap, "kd", "pssm", 0.0)
                references.append(("pssm weighting", "--", pssm))
            for name, style, base in references:
                if not math.isnan(base.mean):
                    ax.axhline(100 * base.mean, color="k", linestyle=style, label=name)
            where = "" if gap is None else f"γ = {gap:g}"
            ax.set(xlabel="mask ratio", title=f"({tag}) {where}".strip())
            ax.legend(fontsize=8)
        axes[0][0].set_ylabel(f"student test {label} (%)")
        fig.suptitle(
            f"{self.mask.capitalize()} mask on {self.dataset}: mean ± 95% interval over seeds"
        )
        save_figure(fig, self.results_dir / f"{stem}.png")

    def _fig13(self, records: list[dict[str, Any]]) -> str | None:
        """TCJSD and NCJSD per epoch, without the mask and with the true mask at one ratio."""
        gap = self.gaps[0]
        ratio = min(self.ratios, key=lambda r: abs(r - self.fig13_ratio))
        groups = {
            "no mask": self._records(records, gap, "kd"),
            f"true mask {ratio:g}": self._records(records, gap, "kd", "true", ratio),
        }
        if not all(groups.values()):
            return None
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, (name, found) in zip(axes, groups.items(), strict=True):
            for key, text in (("val/tcjsd", "TCJSD"), ("val/ncjsd", "NCJSD")):
                curves = [curve(r["metrics"], key) for r in found]
                curves = [c for c in curves if c]
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                epochs = list(range(1, length + 1))
                series = [mean_ci([c[e] for c in curves]) for e in range(length)]
                plot_estimates(ax, epochs, series, text)
            where = "" if gap is None else f", γ = {gap:g}"
            ax.set(xlabel="epoch", title=f"{name}{where}")
            ax.legend()
        axes[0].set_ylabel("JSD teacher vs student, validation (nats)")
        fig.suptitle(f"Fig. 13: divergences over training ({self.mask} mask, {self.dataset})")
        path = "fig13.png"
        save_figure(fig, self.results_dir / path)
        return path

    # --- the claim ---------------------------------------------------------------------
    def _at(self, records, metric, gap, kind, ratio) -> tuple[Estimate, bool]:
        """The cell at ``ratio``, interpolated between neighbours when it is not in the grid."""
        if ratio in self.ratios:
            return self._cell(records, metric, gap, "kd", kind, ratio), False
        below = [r for r in self.ratios if r < ratio]
        above = [r for r in self.ratios if r > ratio]
        if not below or not above:
            return Estimate(math.nan, math.nan, 0), True
        lo, hi = max(below), min(above)
        a = self._cell(records, metric, gap, "kd", kind, lo)
        b = self._cell(records, metric, gap, "kd", kind, hi)
        w = (ratio - lo) / (hi - lo)
        return Estimate((1 - w) * a.mean + w * b.mean, math.nan, min(a.n, b.n)), True

    def _verdicts(self, records: list[dict[str, Any]], metric: str) -> list[Verdict]:
        verdicts = []
        for gap in self.gaps:
            parts, holds, interpolated = [], True, False
            for ratio in CLAIM_RATIOS:
                cells = {}
                for kind in MASK_KINDS:
                    cells[kind], approx = self._at(records, metric, gap, kind, ratio)
                    interpolated |= approx
                t, r, f = (cells[k].mean for k in ("true", "random", "false"))
                holds &= bool(t > r > f)
                parts.append(
                    f"ratio {ratio:g}: true {pct(cells['true']).format(1)}%, random "
                    f"{pct(cells['random']).format(1)}%, false {pct(cells['false']).format(1)}%"
                )
            base = pct(self._cell(records, metric, gap, "kd")).format(1)
            note = " (interpolated between grid ratios)" if interpolated else ""
            where = "" if gap is None else f" at gap {gap:g}"
            verdicts.append(
                Verdict(
                    f"`true` beats `random` beats `false` at ratios 0.25 and 0.5{where}",
                    holds,
                    "; ".join(parts) + f"; unmasked KD {base}%{note}",
                )
            )
        return verdicts


if __name__ == "__main__":
    MaskSweep.main()
