"""The Experiment base: a grid of run specs, executed resumably, then a report.

An experiment script (``experiments/gap_sweep.py`` ...) subclasses :class:`Experiment`,
lists its runs in :meth:`Experiment.specs` and turns finished records into tables and figures
in :meth:`Experiment.report`, which reads only the result store (never TensorBoard files).
:meth:`Experiment.main` gives every script the same command line: ``--seeds``, ``--gpus``,
``--full``, ``--set key=value``, ``--dry-run``, ``--report-only``, ``--retry-failed``.

Running the same command again skips the runs already done and resumes unfinished ones from
their last checkpoint; a run that raises (or whose loss stops being finite) is recorded as
failed with its error and the sweep goes on (``--retry-failed`` runs those again). How the
pending runs execute is the launcher's business (:mod:`ntdh_bench.launchers`), chosen by
``--gpus``, ``--workers``, ``--ddp`` and ``--launcher``; ``--status`` shows progress.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from datamodules.base import data_environment
from ntdh_bench.builders import build_run_datamodule
from ntdh_bench.claims import Verdict, write_verdicts
from ntdh_bench.config import (
    PROTOCOLS,
    dataset_config,
    resolve_run_config,
    validate_after_last_epoch,
)
from ntdh_bench.ensemble import execute_ensemble, plan_tasks
from ntdh_bench.launchers import (
    Executor,
    Launcher,
    PoolLauncher,
    SerialLauncher,
    SlurmOptions,
    SubmititLauncher,
    Sweep,
    is_launch_rank_zero,
)
from ntdh_bench.naming import describe
from ntdh_bench.report import Records, publish
from ntdh_bench.results import ResultStore, canonical_json, config_hash
from ntdh_bench.runner import RunEnv, execute_run
from ntdh_bench.status import sweep_status, write_grid
from ntdh_bench.training import DeviceConfig
from ntdh_bench.validation import ConfigError
from ntdh_core import paths


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: its resolved config (:func:`ntdh_bench.config.resolve_run_config`);
    ``run_id`` is the hash of it."""

    config: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", resolve_run_config(self.config))

    @cached_property
    def run_id(self) -> str:
        return config_hash(self.config)

    @property
    def role(self) -> str:
        return self.config["role"]

    def describe(self) -> str:
        return describe(self.config, self.run_id)


class Experiment(ABC):
    """A paper artefact: a grid of runs and the report made from their records."""

    name: str = ""
    description: str = ""
    # Whether the report reads per-epoch validation curves; if not, networks validate once,
    # after their last epoch, unless the config asks for more (validate_after_last_epoch).
    validation_curves: bool = False

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results_dir = Path(args.results_dir) / self.name
        self.store = ResultStore(self.results_dir)
        ddp = getattr(args, "ddp", False)
        self.env = RunEnv(
            runs_dir=Path(args.runs_dir),
            cache_dir=Path(args.cache_dir),
            devices=DeviceConfig(
                gpus=args.gpus if ddp else min(args.gpus, 1),
                cpu_processes=getattr(args, "cpu_ddp", 1),
                strategy="ddp" if ddp else "auto",
                num_nodes=getattr(args, "num_nodes", 1),
            ),
            experiment=self.name,
            checkpoint_interval_s=getattr(args, "checkpoint_interval", 60.0),
        )

    def dataset_config(self, dataset: str, quick: str | None = None) -> dict[str, Any]:
        """The dataset's experiment config under this command line: ``--full``,
        ``--protocol``, the ``quick:`` size of section ``quick`` and the ``--set`` overrides
        (:func:`ntdh_bench.config.dataset_config`). Without :attr:`validation_curves`,
        networks validate only after their last epoch unless it sets ``val_every``."""
        config = dataset_config(
            dataset,
            full=self.args.full,
            protocol=self.args.protocol,
            quick=quick,
            overrides=self.args.overrides,
        )
        return config if self.validation_curves else validate_after_last_epoch(config)

    def publish(self, fig: Any, stem: str) -> str:
        """Save a report figure beside the tables and log it to TensorBoard."""
        return publish(fig, self.results_dir, Path(self.args.runs_dir), self.name, stem)

    def write_verdicts(self, verdicts: list[Verdict], **context: Any) -> str:
        """``verdicts.md`` (and ``verdicts.json`` for ``ntdh claims``), with this experiment,
        its protocol and ``context`` recorded in each verdict."""
        context = {"experiment": self.name, "protocol": self.args.protocol, **context}
        return write_verdicts(verdicts, self.results_dir / "verdicts.md", context)

    # --- what subclasses provide -------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Experiment-specific flags."""

    @abstractmethod
    def specs(self) -> list[RunSpec]:
        """The grid, in the order it should run (teachers and baselines first)."""

    @abstractmethod
    def report(self, records: Records) -> None:
        """Write tables and figures under ``self.results_dir`` and print the summary."""

    # --- execution ---------------------------------------------------------------------
    def run(self, executor: Executor = execute_run) -> list[dict[str, Any]]:
        """Run what is not done yet, then report; return the grid's finished records.

        ``--cache-dir`` and ``--strict`` reach every datamodule (and pool worker) as
        ``$NTDH_CACHE`` / ``$NTDH_STRICT`` while this runs (:func:`data_environment`)."""
        strict = getattr(self.args, "strict", False)
        with data_environment(getattr(self.args, "cache_dir", None), strict):
            return self._run_sweep(executor)

    def _run_sweep(self, executor: Executor) -> list[dict[str, Any]]:
        specs = self.specs()
        self._validate(specs)
        ids = [s.run_id for s in specs]
        if getattr(self.args, "status", False):
            print(sweep_status(self.results_dir).render())
            return self.store.done_records(ids)
        latest = self.store.latest()
        skip = {"done"} if self.args.retry_failed else {"done", "failed"}
        todo = [s for s in specs if latest.get(s.run_id, {}).get("status") not in skip]
        if self.args.dry_run:
            self._print_plan(specs, todo, latest)
            return self.store.done_records(ids)
        if not self.args.report_only and todo and is_launch_rank_zero():
            write_grid(self.results_dir, self.name, specs)
        if not self.args.report_only and todo:
            self._execute(specs, todo, executor)
        if not is_launch_rank_zero():
            return []  # a DDP helper process: rank 0 records and reports
        records = self.store.done_records(ids)
        wanted = set(ids)
        failed = [
            r for i, r in self.store.latest().items() if i in wanted and r["status"] == "failed"
        ]
        if failed:
            print(
                f"{len(failed)} run(s) failed (see 'error' in {self.store.path}); "
                f"rerun with --retry-failed",
                file=sys.stderr,
            )
        if records:
            self.report(Records(records))
        else:
            print("no finished runs to report yet")
        return records

    def launcher(self) -> Launcher:
        """The launcher the command line asks for (see ``--help``)."""
        args = self.args
        kind = getattr(args, "launcher", "auto")
        if kind == "slurm":
            return SubmititLauncher(
                SlurmOptions(
                    partition=args.slurm_partition,
                    time_min=args.slurm_time,
                    gpus_per_job=max(args.gpus, 0),
                    cpus_per_job=args.slurm_cpus,
                    array_parallelism=args.slurm_array_parallelism,
                    wait=not args.no_wait,
                )
            )
        if args.gpus > 1 and not getattr(args, "ddp", False):
            return PoolLauncher(args.gpus, device_ids=[str(i) for i in range(args.gpus)])
        workers = getattr(args, "workers", 1)
        if workers > 1 and args.gpus == 0:
            return PoolLauncher(workers)
        return SerialLauncher()

    def ensembles_enabled(self, executor: Executor) -> bool:
        """Whether eligible runs train together as vectorised ensembles (not with
        ``--no-ensemble``, a custom executor, DDP or SLURM; see :mod:`ntdh_bench.ensemble`)."""
        args = self.args
        return (
            not getattr(args, "no_ensemble", False)
            and executor is execute_run
            and not self.env.devices.distributed
            and getattr(args, "launcher", "auto") != "slurm"
        )

    def _execute(self, specs: list[RunSpec], todo: list[RunSpec], executor: Executor) -> None:
        launcher = self.launcher()
        runs = [(s.config, s.run_id) for s in todo]
        if self.ensembles_enabled(executor):
            sweep = Sweep(self.name, self.results_dir, self.env, executor, execute_ensemble)
            tasks = plan_tasks(runs, lambda run: run[0], workers=launcher.workers)
        else:
            sweep = Sweep(self.name, self.results_dir, self.env, executor)
            tasks = list(runs)
        show = is_launch_rank_zero()
        bar = tqdm(
            total=len(specs),
            initial=len(specs) - len(todo),
            desc=self.name,
            unit="run",
            dynamic_ncols=True,
            disable=None if show else True,
        )
        described = {s.run_id: s.describe() for s in todo}

        def progress(record: Mapping[str, Any]) -> None:
            if record.get("status") == "failed":
                name = described.get(record.get("run_id"), record.get("run_id"))
                tqdm.write(f"run {name} failed: {record.get('error')}", file=sys.stderr)
            bar.update(1)

        try:
            launcher.launch(sweep, tasks, progress)
        finally:
            bar.close()

    @staticmethod
    def _validate(specs: Sequence[RunSpec]) -> None:
        """Fail before any run starts on bad dataset arguments or missing files (the configs
        were checked when the specs were made). Constructing a datamodule checks its
        arguments and files without loading data."""
        seen: set[str] = set()
        for spec in specs:
            key = canonical_json(spec.config["dataset"])
            if key not in seen:
                seen.add(key)
                try:
                    build_run_datamodule(spec.config)
                except ValueError as err:
                    raise ConfigError(f"dataset: {err}") from err

    def _print_plan(
        self, specs: list[RunSpec], todo: list[RunSpec], latest: Mapping[str, Mapping[str, Any]]
    ) -> None:
        todo_ids = {s.run_id for s in todo}
        for spec in specs:
            state = latest.get(spec.run_id, {}).get("status", "pending")
            mark = "run " if spec.run_id in todo_ids else "skip"
            print(f"[{mark}] {state:8s} {spec.describe()}")
        print(f"{len(specs)} runs: {len(specs) - len(todo)} done or skipped, {len(todo)} to run")

    # --- command line ------------------------------------------------------------------
    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            description=cls.description or cls.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        common = parser.add_argument_group("common to every experiment")
        common.add_argument(
            "--seeds",
            type=int,
            default=5,
            help="seeds per cell; verdicts are paired over seeds (with 2, a 95%% t-interval spans "
            "±12.7 standard errors)",
        )
        common.add_argument("--gpus", type=int, default=0, help="GPUs to use; 0 runs on the CPU")
        common.add_argument(
            "--full",
            action="store_true",
            help="the paper's full training length instead of the quick default",
        )
        common.add_argument(
            "--protocol",
            choices=PROTOCOLS,
            default="suite",
            help="suite: schedules that train the networks properly; released: the authors' "
            "released training (optimizer, epochs, loss weights, temperature), per dataset config",
        )
        common.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config entry, e.g. --set student.epochs=50 (repeatable)",
        )
        common.add_argument(
            "--results-dir",
            default=os.environ.get("NTDH_RESULTS", "results"),
            help="where runs.jsonl, tables and figures go",
        )
        common.add_argument(
            "--runs-dir", default=os.environ.get("NTDH_RUNS", "runs"), help="TensorBoard logs"
        )
        common.add_argument(
            "--cache-dir",
            default=str(paths.cache_root()),
            help="trained teachers, saliencies, masks, extracted features and generated data, "
            "shared between experiments ($NTDH_CACHE)",
        )
        common.add_argument(
            "--strict",
            action="store_true",
            help="stop on data problems that change what is trained on (short reads, unpaired "
            "clips, skipped files) instead of warning and counting them in the run record",
        )
        common.add_argument(
            "--dry-run",
            action="store_true",
            help="print what would run and what is done; run nothing",
        )
        common.add_argument(
            "--report-only",
            action="store_true",
            help="write tables and figures from finished runs; run nothing",
        )
        common.add_argument(
            "--retry-failed", action="store_true", help="run again the runs recorded as failed"
        )
        common.add_argument(
            "--status",
            action="store_true",
            help="show done / running / failed / pending counts and the ETA; run nothing",
        )
        launch = parser.add_argument_group(
            "where runs execute",
            "--gpus N alone runs N worker processes, one per GPU, each taking whole runs from a "
            "queue; with --ddp each run uses all N GPUs (Lightning's DDP). On the CPU, "
            "--workers N runs N processes that share the cores.",
        )
        launch.add_argument(
            "--workers", type=int, default=1, help="CPU worker processes (with --gpus 0)"
        )
        launch.add_argument(
            "--ddp", action="store_true", help="train each run on all --gpus with DDP"
        )
        launch.add_argument(
            "--no-ensemble",
            action="store_true",
            help="train every run alone; by default runs that differ only in seed and data cell "
            "(synthetic, digits: MLPs, KD or decoupled loss, no mask) train together as one "
            "vectorised torch.func ensemble, each recorded as if run alone",
        )
        launch.add_argument(
            "--num-nodes", type=int, default=1, help="machines per DDP run (SLURM or torchrun)"
        )
        launch.add_argument(  # DDP over CPU processes (gloo): tests the path without a GPU
            "--cpu-ddp", type=int, default=1, help=argparse.SUPPRESS
        )
        launch.add_argument(
            "--launcher",
            choices=("auto", "slurm"),
            default="auto",
            help="auto: this machine (serial or pool); slurm: an array job through submitit",
        )
        launch.add_argument(
            "--checkpoint-interval",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="epoch-end resume checkpoints at most this often (0: every epoch)",
        )
        slurm = parser.add_argument_group("SLURM (with --launcher slurm; needs submitit)")
        slurm.add_argument("--slurm-partition", default=None, help="partition to submit to")
        slurm.add_argument("--slurm-time", type=int, default=240, help="minutes per job")
        slurm.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per job")
        slurm.add_argument(
            "--slurm-array-parallelism", type=int, default=64, help="jobs running at once"
        )
        slurm.add_argument(
            "--no-wait", action="store_true", help="submit and return; check with --status"
        )
        cls.add_arguments(parser.add_argument_group(f"{cls.name} options"))
        return parser

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
        args = cls.parser().parse_args(argv)
        if args.seeds < 1:
            cls.parser().error("--seeds must be >= 1")
        if args.gpus < 0 or args.workers < 1 or args.num_nodes < 1:
            cls.parser().error("--gpus must be >= 0, --workers and --num-nodes >= 1")
        if args.ddp and args.gpus < 1 and args.cpu_ddp < 2:
            cls.parser().error("--ddp needs --gpus N (N >= 1)")
        if args.gpus > 0 and args.launcher != "slurm":
            import torch

            if not torch.cuda.is_available():
                cls.parser().error(f"--gpus {args.gpus} asked for, but CUDA is not available")
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            return cls(args).run()
        except ConfigError as err:  # a bad value: say which, run nothing, exit non-zero
            cls.parser().exit(2, f"{cls.parser().prog}: error: {err}\n")
