"""Table IV: the sample mask (Algorithm 2) on two lidar segmentation systems (SemanticKITTI).

The camera image teaches the projected lidar scan in two systems (the ``table4.systems`` of
``experiments/configs/semantic_kitti.yaml``, each with its own model and distiller):

* ``pmf``: PMF's camera stream teaches its point-image stream (one network class for both,
  ``models.pmf``) with PMF's perception-aware KL over the valid pixels
  (``ntdh_bench.distillers.pmf_kl``);
* ``2dpass``: a 2DPASS-style system: the 2D camera network teaches a 3D point branch at the
  projected points (``models.point_branch``: point MLPs with ``scatter_reduce`` voxel pooling,
  no spconv; its docstring lists how it differs from 2DPASS), with Hinton's KD over the points.

For each seed and system: the teacher (trained once, cached), the no-KD student, the KD student
without a mask (``base``), and with Algorithm 2's sample mask (points of each batch scored by
their NCJSD; the config's ``sample_mask``) at each ratio (0.25 / 0.5 / 0.75) as ``true`` /
``false`` / ``random``. Cells: the student's test mIoU (over the projected points of the
validation sequence 08), mean ± 95% interval over seeds. Verdicts per system and ratio, paired
over seeds: ``true`` beats base, ``true`` beats ``random``, ``random`` beats ``false``.

These runs are GPU-sized (ResNet-34 streams on 256 x 1024 crops): ``--gpus 4`` spreads whole
runs over 4 GPUs, ``--gpus 4 --ddp`` trains each run on all of them with Lightning's DDP
(``--num-nodes M`` for several machines). ``--quick`` is the config's ``table4.quick`` size
(light networks, tiny crops, one epoch), which runs on a CPU in minutes on a small data root.

Writes ``results/table4/{table4.md,csv,tex, table4.png, verdicts.md}``.

    python experiments/table4.py --gpus 4 --seeds 5                    # make table4
    python experiments/table4.py --quick --seeds 2 --systems pmf --ratios 0.5
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import numpy as np

from experiments.base import DatasetExperiment
from ntdh_bench.callbacks import curve
from ntdh_bench.claims import Verdict, paired_verdict
from ntdh_bench.config import deep_merge, resolve_model, run_config
from ntdh_bench.experiment import RunSpec
from ntdh_bench.masking import MASK_KINDS
from ntdh_bench.plotting import plot_estimates
from ntdh_bench.report import Records, pct, reference_lines
from ntdh_bench.stats import Estimate, mean_ci
from ntdh_bench.tables import Table

RATIOS = (0.25, 0.5, 0.75)
ROW_KINDS = ("true", "false", "random")  # the paper's Table IV order T, F, R
LETTER = {"true": "T", "false": "F", "random": "R"}
SYSTEM_LABELS = {"pmf": "PMF", "2dpass": "2DPASS-style"}


class Table4(DatasetExperiment):
    """Table IV: PMF-style and 2DPASS-style systems, base and with the sample mask."""

    paper_name = "table4"
    section = "table4"
    description = __doc__
    paper_dataset = "semantic_kitti"
    datasets: ClassVar[tuple[str, ...]] = ("semantic_kitti",)
    grid_flags: ClassVar[tuple[str, ...]] = ("ratios",)

    @classmethod
    def add_experiment_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--systems", nargs="+", default=None, help="systems of the config's table4.systems"
        )
        parser.add_argument(
            "--kinds", nargs="+", choices=MASK_KINDS, default=None, help="sample mask kinds"
        )

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        systems: Mapping[str, Any] = self.grid.get("systems") or {}
        if not systems:
            raise SystemExit(f"{self.dataset}: the config has no table4.systems")
        chosen = list(args.systems or systems)
        unknown = [s for s in chosen if s not in systems]
        if unknown:
            raise SystemExit(f"table4.systems has no {unknown}; it has {sorted(systems)}")
        self.systems = {name: dict(systems[name]) for name in chosen}
        for name, spec in self.systems.items():
            if not spec.get("model") or not spec.get("distiller"):
                raise SystemExit(f"table4.systems.{name} needs a 'model' and a 'distiller'")
        kinds = {str(k).lower() for k in (args.kinds or self.grid.get("kinds", ROW_KINDS))}
        if kinds - set(ROW_KINDS):
            raise SystemExit(f"table4.kinds: unknown mask kind(s) {sorted(kinds - set(ROW_KINDS))}")
        self.kinds = [k for k in ROW_KINDS if k in kinds]
        self.mask_spec = dict(self.grid.get("sample_mask") or {})
        self._models = {n: resolve_model(s["model"]) for n, s in self.systems.items()}

    # --- the grid ----------------------------------------------------------------------
    def system_config(self, system: str) -> dict[str, Any]:
        """The dataset config with the system's model and distiller (replacing the default's)
        and any other section the system sets (merged)."""
        spec = self.systems[system]
        whole = ("model", "distiller")
        config = deep_merge(self.config, {k: v for k, v in spec.items() if k not in whole})
        config.update({k: dict(spec[k]) for k in whole})
        return config

    def _spec(self, system: str, role: str, seed: int, kind=None, ratio=None) -> RunSpec:
        mask = None if kind is None else {**self.mask_spec, "kind": kind, "ratio": ratio}
        config = self.system_config(system)
        return RunSpec(run_config(config, role, seed, None, config["distiller"], sample_mask=mask))

    def specs(self) -> list[RunSpec]:
        specs = []
        for seed in range(self.args.seeds):
            for system in self.systems:
                specs += [self._spec(system, r, seed) for r in ("teacher", "student", "kd")]
                for ratio in self.ratios(RATIOS):
                    specs += [self._spec(system, "kd", seed, k, ratio) for k in self.kinds]
        return specs

    # --- reading records ---------------------------------------------------------------
    def _system(self, records: Records, system: str) -> Records:
        model = self._models[system]
        return records.where(lambda c: c["model"] == model)

    def _cell(self, records: Records, system: str, kind=None, ratio=None) -> Records:
        kd = self._system(records, system).where(role="kd")
        if kind is None:
            return kd.where(sample_mask=None)
        return kd.where(sample_mask__kind=kind, sample_mask__ratio=ratio)

    @staticmethod
    def _masked(cell: Records) -> Estimate:
        """The mean share of scored points that weighed 0 in the training batches."""
        fractions = [
            float(np.nanmean(c))
            for r in cell
            if (c := curve(r["metrics"], "train/masked_fraction"))
        ]
        return pct(mean_ci(fractions))

    # --- the report --------------------------------------------------------------------
    def report(self, records: Records) -> None:
        table = Table(
            title=f"Table IV: the sample mask on lidar segmentation ({self.dataset}, "
            f"protocol {self.args.protocol})",
            columns=["system", "", "mask", "student mIoU (%)", "masked (%)", "NCJSD"],
            digits=[0, 0, 0, 1, 1, 4],
            caption=self._caption(records),
        )
        for system in self.systems:
            label = SYSTEM_LABELS.get(system, system)
            no_kd = self._system(records, system).where(role="student")
            table.add_row(
                label, "w/o KD", "", no_kd.estimate("test/miou", percent=True), None, None
            )
            rows = [("base", "", None, None)]
            for ratio in self.ratios(RATIOS):
                rows += [
                    (f"λ = {ratio:.2f}" if i == 0 else "", LETTER[k], k, ratio)
                    for i, k in enumerate(self.kinds)
                ]
            for title, letter, kind, ratio in rows:
                cell = self._cell(records, system, kind, ratio)
                table.add_row(
                    "",
                    title,
                    letter,
                    cell.estimate("test/miou", percent=True),
                    None if kind is None else self._masked(cell),
                    cell.estimate("test/ncjsd"),
                )
        table.write(self.results_dir, "table4")
        figure = self._figure(records)
        print(table.to_markdown())
        print(
            self.write_verdicts(self.verdicts(records), artefact="Table IV", dataset=self.dataset)
        )
        print(f"written to {self.results_dir}/ (table4.md, .csv, .tex, {figure}, verdicts.md)")

    def _caption(self, records: Records) -> str:
        parts = []
        for system in self.systems:
            teacher = self._system(records, system).where(role="teacher")
            model = self._models[system]["name"]
            distiller = self.systems[system]["distiller"]["name"]
            parts.append(
                f"{SYSTEM_LABELS.get(system, system)}: model {model!r}, distiller "
                f"{distiller!r}, teacher mIoU "
                f"{pct(teacher.estimate('teacher/test/miou')).format(1)}%"
            )
        return (
            "Student test mIoU (%) over the projected points, mean ± 95% interval over seeds (n "
            "per cell in the CSV). T, F, R: true, false, random sample mask (Algorithm 2: the "
            "points of each training batch with the largest, smallest or random NCJSD are "
            "dropped from the distillation term), ratio λ; masked: the mean share of points "
            f"weighing 0. {'; '.join(parts)}. Epochs: student "
            f"{self.config['student']['epochs']}, teacher {self.config['teacher']['epochs']}."
        )

    def _figure(self, records: Records) -> str:
        fig, axes = plt.subplots(
            1, len(self.systems), figsize=(5.2 * len(self.systems), 4.0), squeeze=False
        )
        ratios = self.ratios(RATIOS)
        for ax, system in zip(axes[0], self.systems, strict=True):
            for kind in self.kinds:
                series = [
                    self._cell(records, system, kind, r).estimate("test/miou") for r in ratios
                ]
                plot_estimates(ax, ratios, series, f"{kind} mask", scale=100)
            no_kd = self._system(records, system).where(role="student").estimate("test/miou")
            references = (
                ("KD, no mask", "-.", self._cell(records, system).estimate("test/miou")),
                ("no KD", ":", no_kd),
            )
            reference_lines(ax, references, scale=100)
            ax.set(title=SYSTEM_LABELS.get(system, system), xlabel="mask ratio λ")
            ax.legend(fontsize=8)
        axes[0][0].set_ylabel("student test mIoU (%)")
        fig.suptitle(f"Table IV: the sample mask ({self.dataset}); mean ± 95% interval over seeds")
        return self.publish(fig, "table4")

    # --- the claims --------------------------------------------------------------------
    def verdicts(self, records: Records) -> list[Verdict]:
        """Per system and ratio, paired over seeds: true > base, true > random, random > false."""
        verdicts = []
        pts = dict(scale=100, unit="%", digits=1)
        for system in self.systems:
            who = SYSTEM_LABELS.get(system, system)
            base = self._cell(records, system).values("test/miou")
            for ratio in self.ratios(RATIOS):
                cells = {
                    k: self._cell(records, system, k, ratio).values("test/miou") for k in self.kinds
                }
                at = f" at ratio {ratio:g}"
                context = {"system": system, "ratio": ratio}
                pairs = [
                    ("true", None, f"{who}: `true` beats base{at}", ("true", "base")),
                    ("true", "random", f"{who}: `true` beats `random`{at}", ("true", "random")),
                    ("random", "false", f"{who}: `random` beats `false`{at}", ("random", "false")),
                ]
                for a, b, claim, labels in pairs:
                    if a not in cells or (b is not None and b not in cells):
                        continue
                    other = base if b is None else cells[b]
                    verdicts.append(
                        paired_verdict(claim, cells[a], other, labels, context=context, **pts)
                    )
        return verdicts


if __name__ == "__main__":
    Table4.main()
