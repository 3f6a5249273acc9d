"""Table I: model capacity and modality strength for every dataset that is available.

Model capacity is the parameter count of the teacher's and the student's network (one
architecture class, sized by each modality's input). Modality strength is the test accuracy
(mIoU for dense tasks) of the same network trained on each modality alone, mean ± 95%
interval over seeds. Datasets whose files are missing are listed as skipped.

    python experiments/table1.py                      # every available dataset (make table1)
    python experiments/table1.py --datasets synthetic
"""

from __future__ import annotations

import argparse

from datamodules import DATAMODULES
from models import count_parameters
from ntdh_bench.builders import build_network, build_run_datamodule
from ntdh_bench.config import datasets_with_config, run_config
from ntdh_bench.experiment import Experiment, RunSpec
from ntdh_bench.report import Records, metric_label
from ntdh_bench.tables import Table


def available_datasets() -> list[str]:
    """Registered datasets that have a config and whose files are present."""
    return [name for name in datasets_with_config() if DATAMODULES[name].is_available()]


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
            choices=datasets_with_config(),
            help="datasets to include (default: every available one)",
        )

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.datasets = args.datasets or available_datasets()
        self.configs = {name: self.dataset_config(name) for name in self.datasets}

    def _run(self, name: str, seed: int, modality: str) -> dict:
        """One modality alone; datasets drawn per seed (synthetic, digits) draw seed's data."""
        config = self.configs[name]
        probe = run_config(config, "unimodal", seed, modality=modality)
        data = {"data_seed": seed} if "data_seed" in probe["dataset"] else {}
        return run_config(config, "unimodal", seed, data, modality=modality)

    def specs(self) -> list[RunSpec]:
        return [
            RunSpec(self._run(name, seed, modality))
            for seed in range(self.args.seeds)
            for name in self.configs
            for modality in ("xa", "xb")
        ]

    def capacity(self, name: str) -> tuple[int, int]:
        """Parameter counts of the networks for ``xa`` and ``xb``."""
        config = self._run(name, 0, "xa")
        dm = build_run_datamodule(config)
        return tuple(count_parameters(build_network(config, dm, m)) for m in ("xa", "xb"))

    def report(self, records: Records) -> None:
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
            f"mean ± 95% interval over seeds. Protocol: {self.args.protocol}.",
        )
        for name in self.datasets:
            runs = records.where(dataset__name=name)
            metric = runs.metric_name()  # SSC mIoU for scene completion, else mIoU or acc
            cap_a, cap_b = self.capacity(name)
            table.add_row(
                name,
                f"{cap_a / 1e6:.4f}",
                f"{cap_b / 1e6:.4f}",
                metric_label(metric),
                runs.where(modality="xa").estimate(metric),
                runs.where(modality="xb").estimate(metric),
            )
        skipped = [n for n in DATAMODULES if n not in self.datasets]
        if skipped:
            table.caption += f" Not available here: {', '.join(skipped)}."
        table.write(self.results_dir, "table1")
        print(table.to_markdown())
        print(f"written to {self.results_dir}/ (table1.md, table1.csv, table1.tex)")


if __name__ == "__main__":
    Table1.main()
