"""Fig. 8 (Figs. 9 and 11 on other datasets) and Fig. 13: the masking method of Sec. IV-C.

``--mask feature`` (Algorithm 1): the teacher's input features (or hidden channels) are scored
on the Eq. 26-trained pair, and the top (``true``), bottom (``false``) or a random set
(``random``) of them, at each ratio, is zeroed; on synthetic data the oracle masks
(``oracle_specific``: the teacher-only decisive columns, ``oracle_shared``: the shared ones)
run beside them. ``--scores`` picks the readings of Algorithm 1 (``permuted``, the paper's;
``ablation``). ``--mask sample`` (Algorithm 2): in every training batch the samples with the
largest (``true``), smallest (``false``) or random NCJSD are dropped from the distillation
term, and ``pssm`` weighs them as the released code does.

Claims checked, paired over seeds at ratios 0.25 and 0.5 (those in the grid): ``true`` beats
unmasked KD, ``true`` beats ``random``, ``random`` beats ``false``; Fig. 13: the true mask
lowers the NCJSD over training. Every masked cell also reports the teacher actually used (its
test accuracy, flagged when near chance) and its NCJSD to the student.

Writes ``results/fig8/{fig8.md,csv,tex,png, fig13.png, verdicts.md}`` for the synthetic
feature mask (``results/mask_sweep_<dataset>_<mask>/`` otherwise).

    python experiments/mask_sweep.py --dataset synthetic                  # quick (make fig8)
    python experiments/mask_sweep.py --dataset synthetic --scores permuted ablation --seeds 5
    python experiments/mask_sweep.py --dataset synthetic --mask sample
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import numpy as np

from experiments.base import DatasetExperiment
from ntdh_bench.callbacks import curve
from ntdh_bench.claims import Verdict, paired_verdict, verdict_from_differences
from ntdh_bench.config import run_config
from ntdh_bench.experiment import RunSpec
from ntdh_bench.masking import MASK_KINDS, ORACLE_KINDS, SCORE_READINGS, mask_count
from ntdh_bench.plotting import plot_estimates
from ntdh_bench.report import Records, metric_label, near_chance, pct, reference_lines
from ntdh_bench.stats import mean_ci
from ntdh_bench.tables import Table

CLAIM_RATIOS = (0.25, 0.5)
DEFAULT_RATIOS = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ROW_KINDS = ("true", "random", "false")


class MaskSweep(DatasetExperiment):
    """Fig. 8: the KD student against the mask ratio for true, false and random masks."""

    paper_name = "fig8"
    section = "mask_sweep"
    description = __doc__
    grid_flags: ClassVar[tuple[str, ...]] = ("gaps", "ratios")
    validation_curves = True  # Fig. 13: NCJSD over training

    @classmethod
    def add_experiment_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--mask",
            choices=("feature", "sample"),
            default="feature",
            help="Algorithm 1 (the teacher's features) or Algorithm 2 (samples per batch)",
        )
        parser.add_argument(
            "--scores",
            nargs="+",
            choices=SCORE_READINGS,
            default=None,
            help="readings of Algorithm 1 to run (feature mask; default: the config's)",
        )

    def results_name(self, args: argparse.Namespace) -> str:
        paper = args.dataset == "synthetic" and args.mask == "feature"
        name = "fig8" if paper else f"mask_sweep_{args.dataset}_{args.mask}"
        return name if args.protocol == "suite" else f"{name}_{args.protocol}"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.mask = args.mask
        self.key = f"{self.mask}_mask"
        self.mask_spec = dict(self.grid.get(self.key, {}))
        scores = args.scores or self.grid.get("scores") or [self.mask_spec.get("score", "permuted")]
        self.scores = list(dict.fromkeys(scores)) if self.mask == "feature" else [None]
        self.fig13_ratio = float(self.grid.get("fig13_ratio", CLAIM_RATIOS[0]))
        self.oracles = self.mask == "feature" and self.dataset == "synthetic"
        self.layer = self.mask_spec.get("layer") if self.mask == "feature" else None

    # --- the grid ----------------------------------------------------------------------
    def mask_section(self, kind: str, ratio: float | None, score: str | None) -> dict[str, Any]:
        section = {**self.mask_spec, "kind": kind, "ratio": ratio}
        if score is not None:
            section["score"] = score
        return section

    def masked(self, seed: int, gap: float | None, kind: str, ratio, score=None) -> RunSpec:
        section = {self.key: self.mask_section(kind, ratio, score)}
        return RunSpec(run_config(self.config, "kd", seed, self.data(gap, seed), **section))

    def specs(self) -> list[RunSpec]:
        specs = []
        for seed in range(self.args.seeds):
            for gap in self.gaps():
                data = self.data(gap, seed)
                for role in ("teacher", "student", "kd"):
                    specs.append(RunSpec(run_config(self.config, role, seed, data)))
                if self.layer is not None:  # the scored network unmasked: the reference
                    specs.append(self.masked(seed, gap, "random", 0.0, self.scores[0]))
                for score in self.scores:
                    for ratio in self.ratios(DEFAULT_RATIOS):
                        for kind in MASK_KINDS:
                            if kind == "random" and score != self.scores[0]:
                                continue  # a random mask does not depend on the reading
                            specs.append(self.masked(seed, gap, kind, ratio, score))
                if self.oracles:
                    specs += [self.masked(seed, gap, k, None, self.scores[0]) for k in ORACLE_KINDS]
                if self.mask == "sample":  # the released code's weighting, for reference
                    specs.append(self.masked(seed, gap, "pssm", 0.0))
        return specs

    # --- reading records ---------------------------------------------------------------
    def _cell(self, records: Records, gap, kind, ratio, score=None) -> Records:
        at = records if gap is None else records.where(dataset__gap=gap)
        if kind is None:
            return at.where(role="kd", **{self.key: None})
        conditions = {f"{self.key}__kind": kind, f"{self.key}__ratio": ratio}
        if score is not None and kind not in ("random", *ORACLE_KINDS):
            conditions[f"{self.key}__score"] = score
        return at.where(role="kd", **conditions)

    def _unmasked(self, records: Records, gap) -> Records:
        """The KD reference: plain KD, or the scored network unmasked (hidden-layer masks)."""
        if self.layer is not None:
            return self._cell(records, gap, "random", 0.0)
        return self._cell(records, gap, None, None)

    def _no_kd(self, records: Records, gap) -> Records:
        at = records if gap is None else records.where(dataset__gap=gap)
        return at.where(role="student")

    # --- the report --------------------------------------------------------------------
    def report(self, records: Records) -> None:
        metric = records.metric_name()
        label = metric_label(metric)
        side = f"teacher used {label} (%)" if self.mask == "feature" else "masked (%)"
        table = Table(
            title=f"Mask sweep ({self.mask} mask, {self.dataset}, protocol {self.args.protocol})",
            columns=["gap", "reading", "mask", "ratio", f"KD student {label} (%)", side, "NCJSD"],
            digits=[1, 0, 0, 2, 1, 1, 4],
            caption="Mean ± 95% interval over seeds (n per cell in the CSV). "
            + self._caption_detail(records),
        )
        chance = []
        for gap in self.gaps():
            g = "-" if gap is None else f"{gap:.1f}"
            rows: list[tuple[str, str, Any, Records]] = [
                ("-", "none (KD)", None, self._unmasked(records, gap)),
                ("-", "no KD", None, self._no_kd(records, gap)),
            ]
            if self.mask == "sample":
                rows.append(("-", "pssm", None, self._cell(records, gap, "pssm", 0.0)))
            for score in self.scores:
                for ratio in self.ratios(DEFAULT_RATIOS):
                    for kind in ROW_KINDS:
                        rows.append(
                            (
                                score or "-",
                                kind,
                                ratio,
                                self._cell(records, gap, kind, ratio, score),
                            )
                        )
            if self.oracles:
                rows += [
                    ("truth", k, None, self._cell(records, gap, k, None)) for k in ORACLE_KINDS
                ]
            for reading, kind, ratio, cell in rows:
                teacher = self._side(cell, metric)
                if self.mask == "feature" and near_chance(
                    teacher.mean / 100, self._classes(records)
                ):
                    at = "" if ratio is None else f" {ratio:g}"
                    chance.append(f"{kind}{at} at gap {g}")
                table.add_row(
                    g,
                    reading,
                    kind,
                    ratio,
                    cell.estimate(metric, percent=True),
                    None if kind == "no KD" else teacher,
                    None if kind == "no KD" else cell.estimate("test/ncjsd"),
                )
        if chance:
            table.caption += f" Teacher near chance (within 5 points) in: {'; '.join(chance)}."
        stem = "fig8" if self.name.startswith("fig8") else "mask_sweep"
        table.write(self.results_dir, stem)
        self._figure(records, metric, label, stem)
        fig13 = self._fig13(records)
        print(table.to_markdown())
        verdicts = self.verdicts(records, metric)
        artefact = {"feature": "Fig. 8/9", "sample": "Fig. 11"}[self.mask]
        print(
            self.write_verdicts(verdicts, artefact=artefact, dataset=self.dataset, mask=self.mask)
        )
        written = f"{stem}.md, .csv, .tex, .png" + (f", {fig13}" if fig13 else "")
        print(f"written to {self.results_dir}/ ({written})")

    @staticmethod
    def _dense(records: Records) -> bool:
        return records.metric_name() == "test/miou"

    @staticmethod
    def _classes(records: Records) -> int | None:
        config = records.first_config()
        return None if config is None else config["dataset"].get("n_classes")

    def _side(self, cell: Records, metric: str):
        """The teacher actually used (feature mask) or the masked fraction (sample mask)."""
        if self.mask == "feature":
            name = "test/teacher_" + metric.split("/")[-1]
            return cell.estimate(name, percent=True)
        fractions = [
            float(np.nanmean(c))
            for r in cell
            if (c := curve(r["metrics"], "train/masked_fraction"))
        ]
        return pct(mean_ci(fractions))

    def _caption_detail(self, records: Records) -> str:
        if self.mask == "sample":
            items = "points (valid, labelled pixels)" if self._dense(records) else "samples"
            return (
                f"Sample mask (Algorithm 2): floor(ratio * n) {items} of each batch of n are "
                "dropped from the distillation term; pssm weighs them by the released code's "
                f"omega. Masked column: the mean fraction of {items} with weight 0."
            )
        spec = (
            next((r["config"][self.key] for r in records if r["config"].get(self.key)), None) or {}
        )
        site = {
            "retrain": "retrained on the masked input",
            "feed": "only fed the masked input",
            "scored": "the Eq. 26-trained network it was scored on, masked and frozen",
        }.get(spec.get("teacher"), "?")
        n = next(
            (
                int(r["config"]["dataset"]["n_features"])
                for r in records
                if "n_features" in r["config"]["dataset"]
            ),
            None,
        )
        count = ""
        if n and self.layer is None:
            masked = ", ".join(f"{r:g}: {mask_count(r, n)}" for r in self.ratios(DEFAULT_RATIOS))
            count = f"; floor(ratio * {n}) of the {n} input features are masked ({masked})"
        where = "input features" if self.layer is None else f"channels of {self.layer!r}"
        return (
            f"Feature mask (Algorithm 1) on the teacher's {where}; the teacher is {site}{count}. "
            f"Readings: {', '.join(self.scores)} (permuted: the paper's Algorithm 1; ablation: "
            "zeroing). Teacher column: the test accuracy of the teacher the student learnt from."
        )

    def _figure(self, records: Records, metric: str, label: str, stem: str) -> None:
        gaps = self.gaps()
        fig, axes = plt.subplots(
            len(self.scores),
            len(gaps),
            figsize=(5.5 * len(gaps), 4.2 * len(self.scores)),
            squeeze=False,
        )
        ratios = self.ratios(DEFAULT_RATIOS)
        for row, score in enumerate(self.scores):
            for ax, gap in zip(axes[row], gaps, strict=True):
                for kind in ROW_KINDS:
                    series = [
                        self._cell(records, gap, kind, r, score).estimate(metric) for r in ratios
                    ]
                    plot_estimates(ax, ratios, series, f"{kind} mask", scale=100)
                references = [
                    ("KD, no mask", "-.", self._unmasked(records, gap).estimate(metric)),
                    ("no KD", ":", self._no_kd(records, gap).estimate(metric)),
                ]
                if self.oracles:
                    for kind, style in zip(ORACLE_KINDS, ("--", (0, (1, 3))), strict=True):
                        references.append(
                            (kind, style, self._cell(records, gap, kind, None).estimate(metric))
                        )
                if self.mask == "sample":
                    references.append(
                        (
                            "pssm weighting",
                            "--",
                            self._cell(records, gap, "pssm", 0.0).estimate(metric),
                        )
                    )
                reference_lines(ax, references, scale=100)
                where = "" if gap is None else f"γ = {gap:g}"
                reading = "" if score is None else f" ({score})"
                ax.set(xlabel="mask ratio", title=f"{where}{reading}".strip())
                ax.legend(fontsize=7)
            axes[row][0].set_ylabel(f"student test {label} (%)")
        fig.suptitle(
            f"{self.mask.capitalize()} mask on {self.dataset}: mean ± 95% interval over seeds "
            f"(protocol {self.args.protocol})"
        )
        self.publish(fig, stem)

    def _fig13_groups(self, records: Records) -> tuple[Records, Records, float]:
        gap = self.gaps()[0]
        ratio = min(self.ratios(DEFAULT_RATIOS), key=lambda r: abs(r - self.fig13_ratio))
        return (
            self._unmasked(records, gap),
            self._cell(records, gap, "true", ratio, self.scores[0]),
            ratio,
        )

    def _fig13(self, records: Records) -> str | None:
        """TCJSD and NCJSD per epoch, without the mask and with the true mask at one ratio."""
        plain, masked, ratio = self._fig13_groups(records)
        if not plain or not masked:
            return None
        gap = self.gaps()[0]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, (name, found) in zip(
            axes, (("no mask", plain), (f"true mask {ratio:g}", masked)), strict=True
        ):
            for key, text in (("val/tcjsd", "TCJSD"), ("val/ncjsd", "NCJSD")):
                curves = [c for r in found if (c := curve(r["metrics"], key))]
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                series = [mean_ci([c[e] for c in curves]) for e in range(length)]
                plot_estimates(ax, list(range(1, length + 1)), series, text)
            where = "" if gap is None else f", γ = {gap:g}"
            ax.set(xlabel="epoch", title=f"{name}{where}")
            ax.legend()
        axes[0].set_ylabel("JSD teacher vs student, validation (nats)")
        fig.suptitle(f"Fig. 13: divergences over training ({self.mask} mask, {self.dataset})")
        return self.publish(fig, "fig13")

    # --- the claims --------------------------------------------------------------------
    def verdicts(self, records: Records, metric: str) -> list[Verdict]:
        verdicts = []
        grid = self.ratios(DEFAULT_RATIOS)
        ratios = [r for r in grid if r in CLAIM_RATIOS] or grid
        pts = dict(scale=100, unit="%", digits=1)
        for gap in self.gaps():
            where = "" if gap is None else f" at gap {gap:g}"
            plain = self._unmasked(records, gap).values(metric)
            for score in self.scores:
                reading = "" if score is None else f" ({score} reading)"
                context = {"reading": score or "-", "gap": gap}
                for ratio in ratios:
                    cells = {
                        k: self._cell(records, gap, k, ratio, score).values(metric)
                        for k in ROW_KINDS
                    }
                    at = f" at ratio {ratio:g}{where}{reading}"
                    verdicts += [
                        paired_verdict(
                            f"`true` mask beats unmasked KD{at}",
                            cells["true"],
                            plain,
                            ("true", "unmasked KD"),
                            context=context,
                            **pts,
                        ),
                        paired_verdict(
                            f"`true` beats `random`{at}",
                            cells["true"],
                            cells["random"],
                            ("true", "random"),
                            context=context,
                            **pts,
                        ),
                        paired_verdict(
                            f"`random` beats `false`{at}",
                            cells["random"],
                            cells["false"],
                            ("random", "false"),
                            context=context,
                            **pts,
                        ),
                    ]
            if self.oracles:
                oracle = self._cell(records, gap, "oracle_specific", None).values(metric)
                verdicts.append(
                    paired_verdict(
                        f"masking the teacher-only columns (oracle) beats unmasked KD{where}",
                        oracle,
                        plain,
                        ("oracle_specific", "unmasked KD"),
                        context={"reading": "truth", "gap": gap},
                        **pts,
                    )
                )
        verdicts.append(self._fig13_verdict(records))
        return verdicts

    def _fig13_verdict(self, records: Records) -> Verdict:
        """Fig. 13: per seed, the mean over epochs of NCJSD(no mask) - NCJSD(true mask)."""
        plain, masked, ratio = self._fig13_groups(records)
        curves_plain = _curves_by_seed(plain, "val/ncjsd")
        curves_masked = _curves_by_seed(masked, "val/ncjsd")
        diffs = {}
        for seed in set(curves_plain) & set(curves_masked):
            a, b = curves_plain[seed], curves_masked[seed]
            n = min(len(a), len(b))
            diffs[seed] = (
                float(np.nanmean(np.asarray(a[:n]) - np.asarray(b[:n]))) if n else math.nan
            )
        return verdict_from_differences(
            f"Fig. 13: the true mask ({ratio:g}) lowers the NCJSD over training",
            diffs,
            "mean over epochs of validation NCJSD without the mask minus with it",
            digits=4,
            context={"artefact": "Fig. 13", "reading": self.scores[0] or "-"},
            missing=None if diffs else "no per-epoch NCJSD curves for both runs",
        )


def _curves_by_seed(records: Records, name: str) -> Mapping[int, list[float]]:
    return {int(r["config"]["seed"]): c for r in records if (c := curve(r["metrics"], name))}


if __name__ == "__main__":
    MaskSweep.main()
