"""Table I: model capacity and modality strength for every dataset that is available.

Model capacity is the parameter count of the teacher's and the student's network (one
architecture class, sized by each modality's input). Modality strength is the test accuracy
(mIoU for dense tasks) of the same network trained on each modality alone, mean ± 95%
interval over seeds. Datasets whose files are missing are listed as skipped, with the reason.

    python experiments/table1.py                      # every available dataset (make table1)
    python experiments/table1.py --datasets synthetic
"""

from __future__ import annotations

import argparse
from typing import Any

from datamodules import DATAMODULES, build_datamodule
from models import build_model, count_parameters
from ntdh_bench.experiment import CONFIG_DIR, Experiment, RunSpec, run_config
from ntdh_bench.results import metric_by
from ntdh_bench.stats import mean_ci
from ntdh_bench.tables import Table


def available_datasets() -> list[str]:
    """Registered datasets that have a config and whose files are present."""
    return [
        name
        for name, cls in DATAMODULES.items()
        if (CONFIG_DIR / f"{name}.yaml").exists() and cls.is_available()
    ]


class Table1(Experiment):
    """Table I: capacity (parameters) and strength (each modality trained alone)."""

    name = "table1"
    description = __doc__

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--datasets",
            nargs="+",
            default=None,
            help="datasets to include (default: every available one)",
        )

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.datasets = args.datasets or available_datasets()
        unknown = set(self.datasets) - set(DATAMODULES)
        if unknown:
            raise SystemExit(
                f"unknown dataset(s) {sorted(unknown)}; registered: {sorted(DATAMODULES)}"
            )
        self.configs = {name: self.dataset_config(name) for name in self.datasets}

    def specs(self) -> list[RunSpec]:
        specs = []
        for seed in range(self.args.seeds):
            for name, config in self.configs.items():
                data = {"data_seed": seed} if "data_seed" in _data_args(name) else {}
                for modality in ("xa", "xb"):
                    specs.append(
                        RunSpec(run_config(config, "unimodal", seed, data, modality=modality))
                    )
        return specs

    def capacity(self, name: str) -> tuple[int, int]:
        """Parameter counts of the networks for ``xa`` and ``xb``."""
        config = self.configs[name]
        dm = build_datamodule(name, **{k: v for k, v in config["dataset"].items() if k != "name"})
        shape_a, shape_b = dm.input_shapes()
        model_args = {k: v for k, v in config["model"].items() if k != "name"}
        return tuple(
            count_parameters(
                build_model(config["model"]["name"], shape, dm.num_classes, **model_args)
            )
            for shape in (shape_a, shape_b)
        )

    def report(self, records: list[dict[str, Any]]) -> None:
        table = Table(
            title="Table I: model capacity and modality strength",
            columns=[
                "dataset",
                "capacity xa (M)",
                "capacity xb (M)",
                "metric",
                "strength xa (%)",
                "strength xb (%)",
            ],
            digits=[0, 4, 4, 0, 1, 1],
            scale=100,
            caption="Strength: test metric of the network trained on one modality alone, "
            "mean ± 95% interval over seeds.",
        )
        for name in self.datasets:
            task = DATAMODULES[name].task
            metric = "test/acc" if task == "classification" else "test/miou"
            groups = metric_by(records, "modality", metric, {"dataset.name": name})
            cap_a, cap_b = self.capacity(name)
            table.add_row(
                name,
                f"{cap_a / 1e6:.4f}",
                f"{cap_b / 1e6:.4f}",
                metric.split("/")[1],
                mean_ci(groups.get("xa", [])),
                mean_ci(groups.get("xb", [])),
            )
        skipped = [n for n in DATAMODULES if n not in self.datasets]
        if skipped:
            table.caption += f" Not available here: {', '.join(skipped)}."
        table.write(self.results_dir, "table1")
        print(table.to_markdown())
        print(f"written to {self.results_dir}/ (table1.md, table1.csv, table1.tex)")


def _data_args(name: str) -> set[str]:
    import inspect

    return set(inspect.signature(DATAMODULES[name].__init__).parameters)


if __name__ == "__main__":
    Table1.main()
