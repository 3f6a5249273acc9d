"""Tables II and III: six KD methods without KD, without mask, and with the feature mask.

For each seed: the teacher on the teacher modality (trained once, cached and reused), the
no-KD student, and for each method (FitNet, CRD, RKD, PKT, SP, DKD) the KD student without a
mask and with the feature mask of Algorithm 1 at each ratio (0.25 / 0.5 / 0.75) as ``true`` /
``random`` / ``false``. A masked teacher is retrained on its masked input
(``retrain_teacher``) and, like the saliency, computed once per seed and shared by the methods.
:class:`MethodTable` holds the grid, the table, the figures and the verdicts;
``experiments/table2.py`` (paired digits) and ``experiments/table3.py`` (RAVDESS) only name
their datasets, config section and figures.

Outputs, in ``results/<name>/`` (``<name>_<dataset>`` for a dataset other than the paper's):

* ``<name>.{md,csv,tex}``: laid out like the paper's tables: rows ``w/o KD`` (one shared
  no-KD student), ``w/o mask`` (KD, no mask), then per ratio ``T`` / ``R`` / ``F``; a column
  per method; cells are student test accuracy, mean ± 95% interval over seeds (n in the CSV).
* the accuracy-against-ratio figure (Fig. 9a or 9b): per mask kind, one panel per method and
  one averaged over the methods (per seed, then over seeds), with the unmasked KD and no-KD
  students as reference lines.
* ``fig10.png`` (28x28 digit inputs only): where the masks fall in the input, per ratio (rows)
  and kind (columns): the fraction of seeds in which each pixel is masked. With the default
  input-site mask (``feature_mask.layer: null``) this is the keep mask itself, read from the
  cached masked teacher. With a hidden-layer mask of an MLP (``layer: hidden.0``, the released
  code's choice) it is mapped back to input space through the teacher's first layer: each
  pixel's share of its outgoing weight mass ``sum |W[c, j]|`` that goes into masked channels.
* ``verdicts.md``: per method and ratio, whether ``true`` beats ``random`` beats ``false``,
  with the numbers, whichever way it goes.

Figures are also logged to TensorBoard under ``runs/<experiment>/figures``. The grid comes from
the table's section of ``experiments/configs/<dataset>.yaml`` (methods, ratios, kinds, the
mask's site and saliency settings, per-method distiller overrides); ``--full`` merges the
config's ``full:`` section, ``--quick`` the section's ``quick:`` (a smoke-test size).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import numpy as np
import torch

from ntdh_bench.claims import Verdict, write_verdicts
from ntdh_bench.experiment import Experiment, RunSpec, apply_overrides, deep_merge, run_config
from ntdh_bench.masking import MASK_KINDS, resolve_masks
from ntdh_bench.plotting import log_figure, plot_estimates, save_figure
from ntdh_bench.results import config_get, config_hash
from ntdh_bench.runner import teacher_identity
from ntdh_bench.stats import Estimate, mean_ci
from ntdh_bench.sweeps import pct, sweep_config
from ntdh_bench.tables import Table

METHODS = ("fitnet", "crd", "rkd", "pkt", "sp", "dkd")
LABELS = {"fitnet": "FitNet", "crd": "CRD", "rkd": "RKD", "pkt": "PKT", "sp": "SP", "dkd": "DKD"}
RATIOS = (0.25, 0.5, 0.75)
ROW_KINDS = ("true", "random", "false")  # the paper's row order T, R, F
LETTER = {"true": "T", "random": "R", "false": "F"}
METRIC = "test/acc"


class MethodTable(Experiment):
    """FitNet, CRD, RKD, PKT, SP and DKD without KD, without mask, and masked (Tables II, III).

    Subclasses name the paper's table, its datasets and its figures.
    """

    name = "table2"
    section = "table2"  # the config section that holds the grid
    paper_table = "Table II"
    datasets: tuple[str, ...] = ("mnist_m", "digits")  # the first is the paper's
    data_labels: ClassVar[dict[str, str]] = {}
    ratio_figure = ("fig9a", "Fig. 9(a)")
    input_heatmaps = True  # Fig. 10: only for 28x28 digit inputs

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--dataset",
            default=cls.datasets[0],
            choices=cls.datasets,
            help=f"dataset (the paper's: {cls.datasets[0]})",
        )
        parser.add_argument(
            "--methods", nargs="+", choices=METHODS, default=None, help="KD methods (columns)"
        )
        parser.add_argument("--ratios", type=float, nargs="+", default=None, help="mask ratios")
        parser.add_argument(
            "--kinds", nargs="+", choices=MASK_KINDS, default=None, help="mask kinds"
        )
        parser.add_argument(
            "--quick",
            action="store_true",
            help=f"the config's {cls.section}.quick size (a smoke test: tiny epochs, saliency)",
        )

    def __init__(self, args: argparse.Namespace) -> None:
        self.dataset = args.dataset
        if self.dataset != self.datasets[0]:
            self.name = f"{self.name}_{self.dataset}"
        super().__init__(args)
        config = sweep_config(self, self.dataset, self.section)
        section = config.get(self.section, {})
        if args.quick:  # the quick size under the --set overrides, which still win
            config = apply_overrides(deep_merge(config, section.get("quick", {})), args.overrides)
            section = config[self.section]
        self.config = config
        self.methods = list(args.methods or section.get("methods", METHODS))
        self.ratios = sorted(float(r) for r in (args.ratios or section.get("ratios", RATIOS)))
        kinds = args.kinds or section.get("kinds", ROW_KINDS)
        kinds = {str(k).lower() for k in kinds}  # YAML reads a bare true / false as a boolean
        unknown = kinds - set(ROW_KINDS)
        if unknown:
            raise SystemExit(f"{self.section}.kinds: unknown mask kind(s) {sorted(unknown)}")
        self.kinds = [k for k in ROW_KINDS if k in kinds]
        self.mask_spec = dict(section.get("feature_mask", {}))
        self.distillers: Mapping[str, Mapping[str, Any]] = section.get("distillers", {}) or {}

    # --- the grid ----------------------------------------------------------------------
    def distiller(self, method: str) -> dict[str, Any]:
        return {"name": method, **dict(self.distillers.get(method) or {})}

    def mask(self, kind: str, ratio: float) -> dict[str, Any]:
        return {**self.mask_spec, "kind": kind, "ratio": ratio}

    def masked(self, role: str, seed: int, kind: str, ratio: float, method: str | None = None):
        config = run_config(self.config, role, seed, distiller=method and self.distiller(method))
        config["feature_mask"] = self.mask(kind, ratio)
        return RunSpec(config)

    def specs(self) -> list[RunSpec]:
        """Per seed: teachers first (a ``true`` one computes the seed's saliency while the
        ``random`` ones train), then the students, so that parallel workers rarely wait on or
        duplicate a teacher; each masked teacher is then shared by the six methods."""
        specs = []
        masks = [(k, r) for r in self.ratios for k in self.kinds]
        first = sorted(masks, key=lambda m: (m[0] != "true", m[0] != "random"))
        for seed in range(self.args.seeds):
            specs.append(RunSpec(run_config(self.config, "teacher", seed)))
            specs += [self.masked("teacher", seed, k, r) for k, r in first[:1]]
            specs += [self.masked("teacher", seed, k, r) for k, r in masks if k == "random"]
            specs.append(RunSpec(run_config(self.config, "student", seed)))
            for method in self.methods:
                distiller = self.distiller(method)
                specs.append(RunSpec(run_config(self.config, "kd", seed, None, distiller)))
            specs += [self.masked("teacher", seed, k, r) for k, r in first[1:] if k != "random"]
            for kind, ratio in masks:
                specs += [self.masked("kd", seed, kind, ratio, m) for m in self.methods]
        return specs

    # --- reading records ---------------------------------------------------------------
    def _records(self, records, role, method=None, kind=None, ratio=None) -> list[dict]:
        out = []
        for record in records:
            config = record["config"]
            if config["role"] != role:
                continue
            if method is not None and config_get(config, "distiller.name") != method:
                continue
            mask = config.get("feature_mask")
            if (kind is None) != (mask is None):
                continue
            if kind is not None and (mask["kind"] != kind or mask["ratio"] != ratio):
                continue
            out.append(record)
        return out

    def _values(self, records, role, method=None, kind=None, ratio=None) -> dict[int, float]:
        found = self._records(records, role, method, kind, ratio)
        return {r["config"]["seed"]: r["metrics"][METRIC] for r in found if METRIC in r["metrics"]}

    def _cell(self, records, role, method=None, kind=None, ratio=None) -> Estimate:
        return pct(mean_ci(list(self._values(records, role, method, kind, ratio).values())))

    def _averaged(self, records, kind=None, ratio=None) -> Estimate:
        """The mean over the methods per seed (seeds with every method), then over seeds."""
        per_method = [self._values(records, "kd", m, kind, ratio) for m in self.methods]
        seeds = set.intersection(*(set(v) for v in per_method)) if per_method else set()
        return pct(mean_ci([float(np.mean([v[s] for v in per_method])) for s in sorted(seeds)]))

    # --- the report --------------------------------------------------------------------
    def report(self, records: list[dict[str, Any]]) -> None:
        table = self._table(records)
        table.write(self.results_dir, self.section)
        figures = [self._ratio_figure(records)]
        fig10 = self._fig10(records) if self.input_heatmaps else None
        if fig10:
            figures.append(fig10)
        print(table.to_markdown())
        print(write_verdicts(self._verdicts(records), self.results_dir / "verdicts.md"))
        names = ", ".join([f"{self.section}.md, .csv, .tex", *figures, "verdicts.md"])
        print(
            f"written to {self.results_dir}/ ({names}); figures also in TensorBoard under "
            f"{self._figure_log_dir()}"
        )

    def _table(self, records: list[dict[str, Any]]) -> Table:
        labels = [LABELS[m] for m in self.methods]
        table = Table(
            title=f"{self.paper_table}: KD methods with the feature mask ({self._data_label()})",
            columns=["", "mask", *labels],
            digits=1,
            caption=self._caption(records),
        )
        no_kd = self._cell(records, "student")
        table.add_row("w/o KD", "", *[no_kd for _ in self.methods])
        table.add_row("w/o mask", "", *[self._cell(records, "kd", m) for m in self.methods])
        for ratio in self.ratios:
            for i, kind in enumerate(self.kinds):
                cells = [self._cell(records, "kd", m, kind, ratio) for m in self.methods]
                table.add_row(f"w mask (λ = {ratio:.2f})" if i == 0 else "", LETTER[kind], *cells)
        return table

    def _data_label(self) -> str:
        return self.data_labels.get(self.dataset, self.dataset)

    def _caption(self, records: list[dict[str, Any]]) -> str:
        spec = next((r["config"] for r in records if "feature_mask" in r["config"]), None)
        spec = resolve_masks(spec or {"feature_mask": self.mask("true", 0.25), "seed": 0})
        spec = spec["feature_mask"]
        teacher = self._records(records, "teacher")
        teacher_acc = pct(
            mean_ci([r["metrics"].get(f"teacher/{METRIC}", math.nan) for r in teacher])
        )
        site = "input pixels" if spec["layer"] is None else f"channels of layer {spec['layer']!r}"
        if spec["patch"] is not None:
            site = f"input patches of {spec['patch']}"
        retrain = "retrained on" if spec["retrain_teacher"] else "only fed"
        crd = next(
            (
                r["config"]["distiller"]
                for r in records
                if config_get(r["config"], "distiller.name") == "crd"
            ),
            None,
        )
        crd_text = f" CRD uses {crd['num_negatives']} negatives." if crd else ""
        return (
            f"Student test accuracy (%), mean ± 95% interval over seeds (n per cell in the CSV). "
            f"T, R, F: true, random, false feature mask (Algorithm 1) on the teacher's "
            f"{site}, ratio λ; the teacher is {retrain} the masked input; saliency score "
            f"{spec['score']!r}. Unmasked teacher: {teacher_acc.format(1)}%. Epochs: student "
            f"{self.config['student']['epochs']}, teacher {self.config['teacher']['epochs']}."
            f"{crd_text}"
        )

    # --- figures -----------------------------------------------------------------------
    def _figure_log_dir(self) -> Path:
        return Path(self.args.runs_dir) / self.name / "figures"

    def _publish(self, fig, stem: str) -> str:
        log_figure(fig, self._figure_log_dir(), f"{self.name}/{stem}")
        save_figure(fig, self.results_dir / f"{stem}.png")
        return f"{stem}.png"

    def _ratio_figure(self, records: list[dict[str, Any]]) -> str:
        panels: list[tuple[str, str | None]] = [("mean over methods", None)]
        panels += [(LABELS[m], m) for m in self.methods]
        cols = min(4, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharex=True
        )
        for ax, (title, method) in zip(axes.flat, panels, strict=False):
            for kind in self.kinds:
                if method is None:
                    series = [self._averaged(records, kind, r) for r in self.ratios]
                else:
                    series = [self._cell(records, "kd", method, kind, r) for r in self.ratios]
                plot_estimates(ax, self.ratios, series, f"{kind} mask")
            base = self._averaged(records) if method is None else self._cell(records, "kd", method)
            references = (
                ("KD, no mask", "-.", base),
                ("no KD", ":", self._cell(records, "student")),
            )
            for name, style, ref in references:
                if not math.isnan(ref.mean):
                    ax.axhline(ref.mean, color="k", linestyle=style, label=name)
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
        return self._publish(fig, self.ratio_figure[0])

    def _masked_map(self, config: Mapping[str, Any]) -> np.ndarray | None:
        """Where a masked teacher's mask falls in its input (1: masked), from the cached teacher.

        Input-site masks: ``1 - keep``. Hidden-layer masks: each input pixel's share of its
        first-layer weight mass (``sum_c |W[c, j]|``) that feeds masked channels.
        """
        path = Path(self.args.cache_dir) / "teachers" / config_hash(teacher_identity(config))
        path = path / "model.pt"
        if not path.exists():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        masked = 1.0 - state["keep"].float()
        if resolve_masks(config)["feature_mask"]["layer"] is not None:
            first = next(v for k, v in state.items() if k.endswith("weight") and v.dim() == 2)
            mass = first.abs()  # (channels, pixels)
            masked = (masked.view(-1, 1) * mass).sum(0) / mass.sum(0).clamp_min(1e-12)
        grid = masked.reshape(-1, 28 * 28) if masked.numel() % (28 * 28) == 0 else None
        return None if grid is None else grid.mean(0).view(28, 28).numpy()

    def _fig10(self, records: list[dict[str, Any]]) -> str | None:
        maps: dict[tuple[str, float], np.ndarray] = {}
        for ratio in self.ratios:
            for kind in self.kinds:
                found = self._records(records, "kd", None, kind, ratio)
                configs = {r["config"]["seed"]: r["config"] for r in found}
                arrays = [a for c in configs.values() if (a := self._masked_map(c)) is not None]
                if arrays:
                    maps[(kind, ratio)] = np.mean(arrays, axis=0)
        if not maps:
            print("Fig. 10 skipped: no cached masked teacher to read the masks from")
            return None
        rows, cols = len(self.ratios), len(self.kinds)
        fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
        vmin, vmax = 0.0, 1.0  # a hidden-layer mask's weight shares: stretched for contrast
        if self.mask_spec.get("layer") is not None:
            vmin = min(float(m.min()) for m in maps.values())
            vmax = max(float(m.max()) for m in maps.values())
        image = None
        for i, ratio in enumerate(self.ratios):
            for j, kind in enumerate(self.kinds):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if (kind, ratio) in maps:
                    image = ax.imshow(maps[(kind, ratio)], cmap="magma", vmin=vmin, vmax=vmax)
                ax.set_title(f"{kind} mask, λ = {ratio:g}", fontsize=9)
        spec = resolve_masks({"feature_mask": self.mask("true", 0.25), "seed": 0})["feature_mask"]
        if spec["layer"] is None:
            label = "fraction of seeds masked"
            items = "pixels" if spec["patch"] is None else f"{spec['patch']} patches"
            how = f"masked input {items}"
        else:
            label = "weight share into masked channels"
            how = f"pixels' first-layer weight share into masked {spec['layer']} channels"
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.8, label=label)
        fig.suptitle(f"Fig. 10: {how} ({self._data_label()})")
        return self._publish(fig, "fig10")

    # --- the claim ---------------------------------------------------------------------
    def _verdicts(self, records: list[dict[str, Any]]) -> list[Verdict]:
        """Per method and ratio, then for the mean over the methods (per seed)."""
        verdicts = []
        for method in [*self.methods, None]:
            if method is None:
                base = self._averaged(records).format(1)
            else:
                base = self._cell(records, "kd", method).format(1)
            for ratio in self.ratios:
                if method is None:
                    cells = {k: self._averaged(records, k, ratio) for k in self.kinds}
                else:
                    cells = {k: self._cell(records, "kd", method, k, ratio) for k in self.kinds}
                means = [cells[k].mean for k in ROW_KINDS if k in cells]
                judged = len(means) == 3 and not any(math.isnan(m) for m in means)
                holds = bool(means[0] > means[1] > means[2]) if judged else None
                numbers = ", ".join(f"{k} {cells[k].format(1)}%" for k in self.kinds)
                verdicts.append(
                    Verdict(
                        f"{LABELS.get(method, 'Mean over methods')}: `true` beats `random` beats "
                        f"`false` at ratio {ratio:g}",
                        holds,
                        f"{numbers}; w/o mask {base}%",
                    )
                )
        return verdicts
