"""The Experiment base: a grid of run specs, executed resumably, then a report.

An experiment script (``experiments/gamma_sweep.py`` ...) subclasses :class:`Experiment`,
lists its runs in :meth:`Experiment.specs` and turns finished records into tables and figures
in :meth:`Experiment.report`, which reads only the result store (never TensorBoard files).
:meth:`Experiment.main` gives every script the same command line: ``--seeds``, ``--gpus``,
``--full``, ``--set key=value``, ``--dry-run``, ``--report-only``, ``--retry-failed``.

Running the same command again skips the runs already done; a run that raises is recorded as
failed with its error and the sweep goes on (``--retry-failed`` runs those again).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from datamodules import build_datamodule
from ntdh_bench.results import ResultStore, canonical_json, config_hash, make_record
from ntdh_bench.runner import (
    RunEnv,
    RunResult,
    execute_run,
    resolve_distiller,
    validate_config,
)
from ntdh_bench.training import DeviceConfig

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: its full resolved config; ``run_id`` is the config's hash."""

    config: Mapping[str, Any]

    @cached_property
    def run_id(self) -> str:
        return config_hash(self.config)

    @property
    def role(self) -> str:
        return self.config["role"]

    def describe(self) -> str:
        c = self.config
        extra = ""
        if c.get("distiller"):
            extra = " " + c["distiller"]["name"]
        if c.get("modality"):
            extra = " " + c["modality"]
        return f"{self.run_id} {c['role']}{extra} {c['dataset']['name']} seed={c['seed']}"


def load_config(dataset: str) -> dict[str, Any]:
    """Per-dataset defaults from ``experiments/configs/<dataset>.yaml``."""
    path = CONFIG_DIR / f"{dataset}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no config {path}; configs exist for {known}")
    return yaml.safe_load(path.read_text())


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a copy of ``config``."""
    out = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        keys = dotted.split(".")
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {dotted}: {key!r} is not a section")
        node[keys[-1]] = yaml.safe_load(raw)
    return out


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``update`` (a new dict; inputs untouched)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_config(
    base: Mapping[str, Any],
    role: str,
    seed: int,
    dataset: Mapping[str, Any] | None = None,
    distiller: Mapping[str, Any] | None = None,
    modality: str | None = None,
) -> dict[str, Any]:
    """A run's full config from a dataset config: only the sections its role depends on.

    A teacher's config holds no student or distiller settings, so every student of every
    experiment that shares data, model, seed and teacher schedule shares the teacher.
    """
    config: dict[str, Any] = {
        "role": role,
        "seed": seed,
        "dataset": {**base["dataset"], **(dataset or {})},
        "model": dict(base["model"]),
        "teacher": dict(base["teacher"]),
    }
    if role in ("student", "kd"):
        config["student"] = dict(base["student"])
    if role == "kd":
        config["distiller"] = resolve_distiller(distiller or base["distiller"])
    if role == "unimodal":
        config["modality"] = modality
    return config


class Experiment(ABC):
    """A paper artefact: a grid of runs and the report made from their records."""

    name: str = ""
    description: str = ""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results_dir = Path(args.results_dir) / self.name
        self.store = ResultStore(self.results_dir)
        self.env = RunEnv(
            runs_dir=Path(args.runs_dir),
            cache_dir=Path(args.cache_dir),
            devices=DeviceConfig(gpus=args.gpus),
            experiment=self.name,
        )

    def dataset_config(self, dataset: str) -> dict[str, Any]:
        """The dataset's YAML defaults, with ``full:`` merged under ``--full``, then ``--set``."""
        config = load_config(dataset)
        full = config.pop("full", {}) or {}
        if self.args.full:
            config = deep_merge(config, full)
        return apply_overrides(config, self.args.overrides)

    # --- what subclasses provide -------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Experiment-specific flags."""

    @abstractmethod
    def specs(self) -> list[RunSpec]:
        """The grid, in the order it should run (teachers and baselines first)."""

    @abstractmethod
    def report(self, records: list[dict[str, Any]]) -> None:
        """Write tables and figures under ``self.results_dir`` and print the summary."""

    # --- execution ---------------------------------------------------------------------
    def run(
        self, executor: Callable[[Mapping[str, Any], RunEnv, str], RunResult] = execute_run
    ) -> list[dict[str, Any]]:
        """Run what is not done yet, then report; return the grid's finished records."""
        specs = self.specs()
        self._validate(specs)
        ids = [s.run_id for s in specs]
        latest = self.store.latest()
        skip = {"done"} if self.args.retry_failed else {"done", "failed"}
        todo = [s for s in specs if latest.get(s.run_id, {}).get("status") not in skip]
        if self.args.dry_run:
            self._print_plan(specs, todo, latest)
            return self.store.done_records(ids)
        if not self.args.report_only and todo:
            self._execute(specs, todo, executor)
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
            self.report(records)
        else:
            print("no finished runs to report yet")
        return records

    @staticmethod
    def _validate(specs: Sequence[RunSpec]) -> None:
        """Fail before any run starts: malformed configs, bad dataset arguments, missing files.

        Constructing a datamodule checks its arguments and files without loading data.
        """
        seen: set[str] = set()
        for spec in specs:
            validate_config(spec.config)
            dataset = spec.config["dataset"]
            key = canonical_json(dataset)
            if key not in seen:
                seen.add(key)
                args = {k: v for k, v in dataset.items() if k != "name"}
                build_datamodule(dataset["name"], **args)

    def _execute(
        self,
        specs: list[RunSpec],
        todo: list[RunSpec],
        executor: Callable[[Mapping[str, Any], RunEnv, str], RunResult],
    ) -> None:
        bar = tqdm(
            total=len(specs),
            initial=len(specs) - len(todo),
            desc=self.name,
            unit="run",
            dynamic_ncols=True,
            disable=None,
        )
        try:
            for spec in todo:
                bar.set_postfix_str(spec.describe(), refresh=True)
                started = time.perf_counter()
                try:
                    result = executor(spec.config, self.env, spec.run_id)
                    status, error, metrics = "done", None, result.metrics
                    timing = {**result.timing, "total_s": time.perf_counter() - started}
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # a failed run is recorded and the sweep goes on
                    status, metrics = "failed", {}
                    error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                    timing = {"total_s": time.perf_counter() - started}
                    log.error("run %s failed: %s", spec.run_id, error)
                    tqdm.write(f"run {spec.describe()} failed: {error}", file=sys.stderr)
                self.store.append(
                    make_record(spec.run_id, self.name, spec.config, metrics, status, error, timing)
                )
                bar.update(1)
        finally:
            bar.close()

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
        common.add_argument("--seeds", type=int, default=3, help="number of seeds per cell")
        common.add_argument("--gpus", type=int, default=0, help="GPUs to use; 0 runs on the CPU")
        common.add_argument(
            "--full",
            action="store_true",
            help="the paper's full training length instead of the quick default",
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
            default=os.environ.get("NTDH_CACHE", "cache"),
            help="trained teachers, shared between experiments",
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
        cls.add_arguments(parser.add_argument_group(f"{cls.name} options"))
        return parser

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
        args = cls.parser().parse_args(argv)
        if args.seeds < 1:
            cls.parser().error("--seeds must be >= 1")
        if args.gpus < 0:
            cls.parser().error("--gpus must be >= 0")
        if args.gpus > 0:
            import torch

            if not torch.cuda.is_available():
                cls.parser().error(f"--gpus {args.gpus} asked for, but CUDA is not available")
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return cls(args).run()
