"""Tables II and III: six KD methods without KD, without mask, and with the feature mask.

For each seed: the teacher (trained once, cached), the no-KD student, and for each method
(FitNet, CRD, RKD, PKT, SP, DKD) the KD student without a mask and with Algorithm 1's feature
mask at each ratio (0.25 / 0.5 / 0.75) as ``true`` / ``random`` / ``false``. A masked teacher
(retrained on its masked input, or the scored network itself for a hidden-layer mask) is
shared by the six methods. :class:`MethodTable` holds the grid, table, figures and verdicts;
``table2.py`` and ``table3.py`` only name their datasets, section and figures.

Outputs, in ``results/<name>/`` (``<name>_<dataset>`` for a dataset other than the paper's):
``<section>.{md,csv,tex}`` laid out like the paper's table (plus the teacher each row
distilled from); the accuracy-against-ratio figure (Fig. 9a or 9b); ``fig10.png`` for 28x28
digit inputs (where the masks fall); ``verdicts.md`` with paired verdicts per method and
ratio: true beats unmasked KD, true beats random, random beats false.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import numpy as np

from experiments.base import DatasetExperiment
from ntdh_bench.claims import Verdict, paired_verdict
from ntdh_bench.config import run_config
from ntdh_bench.experiment import RunSpec
from ntdh_bench.masking import MASK_KINDS
from ntdh_bench.plotting import plot_estimates
from ntdh_bench.report import Records, mean_over, near_chance, pct, reference_lines
from ntdh_bench.stats import Estimate, mean_ci
from ntdh_bench.tables import Table
from ntdh_bench.teachers import cached_mask

METHODS = ("fitnet", "crd", "rkd", "pkt", "sp", "dkd")
LABELS = {"fitnet": "FitNet", "crd": "CRD", "rkd": "RKD", "pkt": "PKT", "sp": "SP", "dkd": "DKD"}
RATIOS = (0.25, 0.5, 0.75)
ROW_KINDS = ("true", "random", "false")  # the paper's row order T, R, F
LETTER = {"true": "T", "random": "R", "false": "F"}


class MethodTable(DatasetExperiment):
    """FitNet, CRD, RKD, PKT, SP and DKD without KD, without mask, and masked."""

    paper_name = "table2"
    section = "table2"
    paper_table = "Table II"
    paper_dataset = "mnist_m"
    datasets: ClassVar[tuple[str, ...]] = ("mnist_m", "digits")
    data_labels: ClassVar[dict[str, str]] = {}
    ratio_figure = ("fig9a", "Fig. 9(a)")
    input_heatmaps = True  # Fig. 10: only for 28x28 digit inputs
    num_classes = 10  # for the near-chance flag of the teacher column
    grid_flags: ClassVar[tuple[str, ...]] = ("ratios",)

    @classmethod
    def add_experiment_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--methods", nargs="+", choices=METHODS, default=None, help="KD methods (columns)"
        )
        parser.add_argument(
            "--kinds", nargs="+", choices=MASK_KINDS, default=None, help="mask kinds"
        )

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.methods = list(args.methods or self.grid.get("methods", METHODS))
        kinds = {str(k).lower() for k in (args.kinds or self.grid.get("kinds", ROW_KINDS))}
        unknown = kinds - set(ROW_KINDS)
        if unknown:
            raise SystemExit(f"{self.section}.kinds: unknown mask kind(s) {sorted(unknown)}")
        self.kinds = [k for k in ROW_KINDS if k in kinds]
        self.mask_spec = dict(self.grid.get("feature_mask", {}))
        self.layer = self.mask_spec.get("layer")
        self.distillers: Mapping[str, Mapping[str, Any]] = self.grid.get("distillers", {}) or {}

    # --- the grid ----------------------------------------------------------------------
    def distiller(self, method: str) -> dict[str, Any]:
        return {"name": method, **dict(self.distillers.get(method) or {})}

    def masked(self, role: str, seed: int, kind: str, ratio: float, method: str | None = None):
        distiller = self.distiller(method) if method else None
        mask = {**self.mask_spec, "kind": kind, "ratio": ratio}
        return RunSpec(run_config(self.config, role, seed, None, distiller, feature_mask=mask))

    def specs(self) -> list[RunSpec]:
        """Per seed: teachers first (a ``true`` one computes the seed's saliency while the
        ``random`` ones train), then the students, so that parallel workers rarely wait on or
        duplicate a teacher; each masked teacher is then shared by the six methods."""
        specs = []
        masks = [(k, r) for r in self.ratios(RATIOS) for k in self.kinds]
        first = sorted(masks, key=lambda m: (m[0] != "true", m[0] != "random"))
        for seed in range(self.args.seeds):
            specs.append(RunSpec(run_config(self.config, "teacher", seed)))
            specs += [self.masked("teacher", seed, k, r) for k, r in first[:1]]
            specs += [self.masked("teacher", seed, k, r) for k, r in masks if k == "random"]
            specs.append(RunSpec(run_config(self.config, "student", seed)))
            for method in self.methods:
                specs.append(
                    RunSpec(run_config(self.config, "kd", seed, None, self.distiller(method)))
                )
                if self.layer is not None:  # the scored network unmasked: the reference
                    specs.append(self.masked("kd", seed, "random", 0.0, method))
            specs += [self.masked("teacher", seed, k, r) for k, r in first[1:] if k != "random"]
            for kind, ratio in masks:
                specs += [self.masked("kd", seed, kind, ratio, m) for m in self.methods]
        return specs

    # --- reading records ---------------------------------------------------------------
    def _kd(self, records: Records, method: str | None, kind=None, ratio=None) -> Records:
        cell = records.where(role="kd")
        if method is not None:
            cell = cell.where(distiller__name=method)
        if kind is None:
            if self.layer is not None:  # the scored network, unmasked
                return cell.where(feature_mask__kind="random", feature_mask__ratio=0.0)
            return cell.where(feature_mask=None)
        return cell.where(feature_mask__kind=kind, feature_mask__ratio=ratio)

    def _values(self, records: Records, method, kind=None, ratio=None) -> dict[int, float]:
        if method is None:  # the mean over the methods, per seed
            return mean_over(self._values(records, m, kind, ratio) for m in self.methods)
        return self._kd(records, method, kind, ratio).values("test/acc")

    def _cell(self, records: Records, method, kind=None, ratio=None) -> Estimate:
        return pct(mean_ci(list(self._values(records, method, kind, ratio).values())))

    # --- the report --------------------------------------------------------------------
    def report(self, records: Records) -> None:
        table = self._table(records)
        table.write(self.results_dir, self.section)
        figures = [self._ratio_figure(records)]
        fig10 = self._fig10(records) if self.input_heatmaps else None
        if fig10:
            figures.append(fig10)
        print(table.to_markdown())
        context = {
            "artefact": self.paper_table,
            "dataset": self.dataset,
            "reading": self.mask_spec.get("score", "permuted"),
        }
        print(self.write_verdicts(self.verdicts(records), **context))
        names = ", ".join([f"{self.section}.md, .csv, .tex", *figures, "verdicts.md"])
        print(f"written to {self.results_dir}/ ({names}); figures also in TensorBoard")

    def _table(self, records: Records) -> Table:
        labels = [LABELS[m] for m in self.methods]
        table = Table(
            title=f"{self.paper_table}: KD methods with the feature mask ({self._data_label()}, "
            f"protocol {self.args.protocol})",
            columns=["", "mask", *labels, "teacher used (%)"],
            digits=1,
            caption=self._caption(records),
        )
        no_kd = pct(records.where(role="student").estimate("test/acc"))
        table.add_row("w/o KD", "", *[no_kd for _ in self.methods], None)
        rows = [("w/o mask", "", None, None)]
        for ratio in self.ratios(RATIOS):
            rows += [
                (f"w mask (λ = {ratio:.2f})" if i == 0 else "", LETTER[k], k, ratio)
                for i, k in enumerate(self.kinds)
            ]
        chance = []
        for title, letter, kind, ratio in rows:
            cells = [self._cell(records, m, kind, ratio) for m in self.methods]
            teacher = self._kd(records, None, kind, ratio).estimate(
                "test/teacher_acc", percent=True
            )
            if near_chance(teacher.mean / 100, self.num_classes):
                chance.append("w/o mask" if kind is None else f"{kind} at {ratio:g}")
            table.add_row(title, letter, *cells, teacher)
        if chance:
            table.caption += (
                f" The teacher used is near chance (within 5 points of "
                f"{100 / self.num_classes:.1f}%) "
                f"for: {'; '.join(chance)}: KD from it is close to no KD."
            )
        return table

    def _data_label(self) -> str:
        return self.data_labels.get(self.dataset, self.dataset)

    def _caption(self, records: Records) -> str:
        spec = (
            next(
                (r["config"]["feature_mask"] for r in records if "feature_mask" in r["config"]),
                None,
            )
            or {}
        )
        teacher_acc = pct(
            records.where(role="teacher", feature_mask=None).estimate("teacher/test/acc")
        )
        site = "input pixels" if self.layer is None else f"channels of layer {self.layer!r}"
        if spec.get("patch") is not None:
            site = f"input patches of {spec['patch']}"
        how = {
            "retrain": "retrained on the masked input",
            "feed": "only fed the masked input",
            "scored": "the Eq. 26-trained network it was scored on, masked and frozen (w/o mask: "
            "the same network unmasked)",
        }.get(spec.get("teacher"), "?")
        crd = next(
            (
                r["config"]["distiller"]
                for r in records
                if r["config"].get("distiller", {}).get("name") == "crd"
            ),
            None,
        )
        crd_text = f" CRD uses {crd['num_negatives']} negatives." if crd else ""
        return (
            "Student test accuracy (%), mean ± 95% interval over seeds (n per cell in the CSV). "
            f"T, R, F: true, random, false feature mask (Algorithm 1) on the teacher's {site}, "
            f"ratio λ; the teacher is {how}; saliency reading {spec.get('score', 'permuted')!r}. "
            f"Last column: test accuracy of the teacher the row distilled from. Unmasked teacher: "
            f"{teacher_acc.format(1)}%. Epochs: student {self.config['student']['epochs']}, "
            f"teacher {self.config['teacher']['epochs']}.{crd_text}"
        )

    # --- figures -----------------------------------------------------------------------
    def _ratio_figure(self, records: Records) -> str:
        panels: list[tuple[str, str | None]] = [("mean over methods", None)]
        panels += [(LABELS[m], m) for m in self.methods]
        cols = min(4, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharex=True
        )
        ratios = self.ratios(RATIOS)
        for ax, (title, method) in zip(axes.flat, panels, strict=False):
            for kind in self.kinds:
                series = [self._cell(records, method, kind, r) for r in ratios]
                plot_estimates(ax, ratios, series, f"{kind} mask")
            references = (
                ("KD, no mask", "-.", self._cell(records, method)),
                ("no KD", ":", pct(records.where(role="student").estimate("test/acc"))),
            )
            reference_lines(ax, references)
            ax.set(title=title, xlabel="mask ratio λ")
        for ax in axes.flat[len(panels) :]:
            ax.axis("off")
        for ax in axes[:, 0]:
            ax.set_ylabel("student test acc (%)")
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(
            f"{self.ratio_figure[1]}: accuracy against the mask ratio ({self._data_label()}); "
            "mean ± 95% interval over seeds"
        )
        return self.publish(fig, self.ratio_figure[0])

    def _masked_map(self, config: Mapping[str, Any]) -> np.ndarray | None:
        """Where a run's mask falls in its 28x28 input (1: masked), read from the cache.

        Input masks: ``1 - keep``. Hidden-layer masks of an MLP: each pixel's share of its
        first-layer weight mass (``sum_c |W[c, j]|``) that feeds masked channels.
        """
        keep = cached_mask(config, self.args.cache_dir)
        if keep is None:
            return None
        masked = 1.0 - keep.float().flatten()
        if self.layer is not None:
            return None  # channels have no place in the input without the scored weights
        return (
            masked.view(-1, 28 * 28).mean(0).view(28, 28).numpy()
            if masked.numel() % 784 == 0
            else None
        )

    def _fig10(self, records: Records) -> str | None:
        maps: dict[tuple[str, float], np.ndarray] = {}
        ratios = self.ratios(RATIOS)
        for ratio in ratios:
            for kind in self.kinds:
                configs = {
                    r["config"]["seed"]: r["config"] for r in self._kd(records, None, kind, ratio)
                }
                arrays = [a for c in configs.values() if (a := self._masked_map(c)) is not None]
                if arrays:
                    maps[(kind, ratio)] = np.mean(arrays, axis=0)
        if not maps:
            print("Fig. 10 skipped: no cached input-feature mask to draw")
            return None
        fig, axes = plt.subplots(
            len(ratios),
            len(self.kinds),
            figsize=(3.0 * len(self.kinds), 3.0 * len(ratios)),
            squeeze=False,
        )
        image = None
        for i, ratio in enumerate(ratios):
            for j, kind in enumerate(self.kinds):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if (kind, ratio) in maps:
                    image = ax.imshow(maps[(kind, ratio)], cmap="magma", vmin=0.0, vmax=1.0)
                ax.set_title(f"{kind} mask, λ = {ratio:g}", fontsize=9)
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.8, label="fraction of seeds masked")
        fig.suptitle(f"Fig. 10: masked input pixels ({self._data_label()})")
        return self.publish(fig, "fig10")

    # --- the claims --------------------------------------------------------------------
    def verdicts(self, records: Records) -> list[Verdict]:
        """Per method (and the mean over methods, per seed) and ratio, paired over seeds."""
        verdicts = []
        pts = dict(scale=100, unit="%", digits=1)
        for method in [*self.methods, None]:
            who = LABELS.get(method, "Mean over methods")
            plain = self._values(records, method)
            for ratio in self.ratios(RATIOS):
                cells = {k: self._values(records, method, k, ratio) for k in self.kinds}
                at = f" at ratio {ratio:g}"
                if "true" in cells:
                    verdicts.append(
                        paired_verdict(
                            f"{who}: `true` beats unmasked KD{at}",
                            cells["true"],
                            plain,
                            ("true", "w/o mask"),
                            **pts,
                        )
                    )
                if "true" in cells and "random" in cells:
                    verdicts.append(
                        paired_verdict(
                            f"{who}: `true` beats `random`{at}",
                            cells["true"],
                            cells["random"],
                            ("true", "random"),
                            **pts,
                        )
                    )
                if "random" in cells and "false" in cells:
                    verdicts.append(
                        paired_verdict(
                            f"{who}: `random` beats `false`{at}",
                            cells["random"],
                            cells["false"],
                            ("random", "false"),
                            **pts,
                        )
                    )
        return verdicts
