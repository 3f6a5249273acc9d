"""What the per-dataset experiment scripts share: ``--dataset`` (and ``--gaps``, ``--ratios``),
the dataset's config with its experiment section, and the results folder's name."""

from __future__ import annotations

import argparse
from typing import Any, ClassVar

from ntdh_bench.config import datasets_with_config
from ntdh_bench.experiment import Experiment


class DatasetExperiment(Experiment):
    """An experiment over one dataset, whose grid is the ``section`` of its config.

    Results go to ``results/<paper_name>`` for the paper's dataset and protocol, else
    ``results/<name>_<dataset>`` (and ``_released`` under ``--protocol released``).
    """

    section: ClassVar[str] = ""
    paper_name: ClassVar[str] = ""
    paper_dataset: ClassVar[str] = "synthetic"
    datasets: ClassVar[tuple[str, ...] | None] = None  # None: every dataset with a config
    grid_flags: ClassVar[tuple[str, ...]] = ()  # of "gaps", "ratios"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        choices = list(cls.datasets or datasets_with_config())
        parser.add_argument(
            "--dataset",
            default=cls.paper_dataset,
            choices=choices,
            help=f"dataset with a config ({', '.join(choices)}); the paper's: {cls.paper_dataset}",
        )
        if "gaps" in cls.grid_flags:
            parser.add_argument(
                "--gaps", type=float, nargs="+", default=None, help="domain gaps (synthetic data)"
            )
        if cls.section:
            parser.add_argument(
                "--quick",
                action="store_true",
                help=f"the config's {cls.section}.quick size: a smoke test (tiny epochs, small "
                "data) that checks the pipeline, not the claims",
            )
        if "ratios" in cls.grid_flags:
            parser.add_argument("--ratios", type=float, nargs="+", default=None, help="mask ratios")
        cls.add_experiment_arguments(parser)

    @classmethod
    def add_experiment_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags of one experiment."""

    def results_name(self, args: argparse.Namespace) -> str:
        """The results folder: the paper's name, or suffixed by dataset (and protocol)."""
        name = self.paper_name if args.dataset == self.paper_dataset else self.variant_name(args)
        return name if args.protocol == "suite" else f"{name}_{args.protocol}"

    def variant_name(self, args: argparse.Namespace) -> str:
        return f"{self.paper_name}_{args.dataset}"

    def __init__(self, args: argparse.Namespace) -> None:
        self.dataset = args.dataset
        self.name = self.results_name(args)
        super().__init__(args)
        quick = self.section if getattr(args, "quick", False) else None
        self.config = self.dataset_config(self.dataset, quick=quick)
        self.grid: dict[str, Any] = dict(self.config.get(self.section) or {})

    def gaps(self) -> list[float | None]:
        """The swept domain gaps (``--gaps``, else the section's, else the config's ``gaps``);
        ``[None]`` for data without a gap."""
        gaps = getattr(self.args, "gaps", None) or self.grid.get("gaps")
        return [float(g) for g in gaps] if gaps else [None]

    def ratios(self, default: tuple[float, ...]) -> list[float]:
        """The swept mask ratios, ascending (``--ratios``, else the section's, else default)."""
        return sorted(
            float(r)
            for r in (getattr(self.args, "ratios", None) or self.grid.get("ratios", default))
        )

    @staticmethod
    def data(gap: float | None, seed: int) -> dict[str, Any]:
        """The dataset options of one cell: the gap and a data seed per seed (synthetic)."""
        return {} if gap is None else {"gap": gap, "data_seed": seed}
