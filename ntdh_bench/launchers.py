"""Launchers: how a sweep's pending runs get executed (the DomainBed pattern, on Lightning).

* :class:`SerialLauncher`: one run after another in this process (CPU, one GPU, or each run
  on all GPUs with Lightning's DDP strategy).
* :class:`PoolLauncher`: N worker processes, each pinned to one device through
  ``CUDA_VISIBLE_DEVICES`` (or CPU workers sharing the cores), each taking whole runs from a
  queue and running many runs in one process, so nothing is re-imported per run.
* :class:`SubmititLauncher`: a SLURM array job of runs through submitit (or submitit's local
  executor); a preempted or timed-out job is requeued and its run resumes from its last
  checkpoint.

Every launcher executes runs through :func:`run_one`, which marks the run as running, catches
its failure, and appends its record to the result store (which locks, so concurrent workers
and jobs can share it). Only the launching rank writes: under DDP the other ranks compute the
same run and record nothing.

A task is one run ``(config, run_id)`` or a list of them that train together as a vectorised
ensemble (:mod:`ntdh_bench.ensemble`, when the sweep has an ``ensemble_executor``);
:func:`run_task` executes either and returns one record per run, recorded exactly as a run
alone is (locks, ``running/`` markers, done / failed / skipped).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ntdh_bench.results import ResultStore, make_record
from ntdh_bench.runner import RunEnv, RunResult, execute_run
from ntdh_bench.training import DeviceConfig

log = logging.getLogger(__name__)

Executor = Callable[[Mapping[str, Any], RunEnv, str], RunResult]
# (configs, env, run_ids) -> per run, its result or the exception that failed it
EnsembleExecutor = Callable[
    [Sequence[Mapping[str, Any]], RunEnv, Sequence[str]], Sequence["RunResult | Exception"]
]
Run = tuple[Mapping[str, Any], str]
Task = Run | list[Run]
Progress = Callable[[Mapping[str, Any]], None]
RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "RANK")


def is_launch_rank_zero() -> bool:
    """False in the extra processes that DDP starts (they must not write records)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


@dataclass
class Sweep:
    """What every launcher needs to run an experiment's runs (picklable for workers)."""

    experiment: str
    results_dir: Path
    env: RunEnv
    executor: Executor = execute_run
    ensemble_executor: EnsembleExecutor | None = None
    started: float = field(default_factory=time.time)  # records after this are this sweep's

    @property
    def running_dir(self) -> Path:
        return self.results_dir / "running"


@contextlib.contextmanager
def run_lock(running_dir: Path, run_id: str) -> Iterator[bool]:
    """Try to take ``running/<run_id>.lock`` (an exclusive, non-blocking ``flock``); yields
    whether this process holds it. Two sweeps on one store thus never train a run at once.

    The lock file is removed while held, before it is released: a sweep that opened the old
    file meanwhile then holds a lock on a removed file, which is harmless because a lock
    holder reads the store before it runs (and finds the record the first one wrote).
    """
    running_dir.mkdir(parents=True, exist_ok=True)
    path = running_dir / f"{run_id}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock


def non_finite(metrics: Mapping[str, float]) -> list[str]:
    """The metrics whose values are NaN or infinite (such a run is not done)."""
    bad = []
    for name, value in metrics.items():
        try:
            finite = math.isfinite(float(value))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            bad.append(name)
    return bad


def run_one(sweep: Sweep, config: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Execute one run, record it (done or failed) and return the record.

    While it runs, ``results/<experiment>/running/<run_id>.json`` names its process, host and
    start time, for ``ntdh status``, and ``running/<run_id>.lock`` is held
    (:func:`run_lock`): a run locked by another sweep, or found done (or failed during this
    sweep) in the store once the lock is taken, is skipped and a ``skipped`` record (not
    stored) is returned. Under DDP only the launching rank locks and writes.

    A run is done only when it returned metrics and every one of them is finite; otherwise
    it is recorded as failed with the reason (a divergence, a non-finite metric or an
    incomplete fit raise from the guards of :mod:`ntdh_bench.guards`).
    """
    if not is_launch_rank_zero():
        return _execute_and_record(sweep, config, run_id, rank_zero=False)
    with run_lock(sweep.running_dir, run_id) as held:
        if not held:
            return _skipped(run_id, "running in another sweep (its lock is held)")
        skip = _skip_reason(ResultStore(sweep.results_dir).latest().get(run_id), sweep.started)
        if skip is not None:
            return _skipped(run_id, skip)
        return _execute_and_record(sweep, config, run_id, rank_zero=True)


def _skip_reason(latest: Mapping[str, Any] | None, sweep_started: float) -> str | None:
    """Why a run whose lock this sweep holds need not run: done, or failed in this sweep."""
    if latest is None:
        return None
    started = float(latest.get("worker", {}).get("started") or 0.0)
    if latest["status"] == "done":
        return "done by another sweep"
    if latest["status"] == "failed" and started >= sweep_started:
        return "failed in another sweep during this one"
    return None


def _skipped(run_id: str, reason: str) -> dict[str, Any]:
    log.info("run %s skipped: %s", run_id, reason)
    return {"run_id": run_id, "status": "skipped", "error": reason}


def _worker_info() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started": time.time(),
    }


def _execute_and_record(
    sweep: Sweep, config: Mapping[str, Any], run_id: str, rank_zero: bool
) -> dict[str, Any]:
    marker = sweep.running_dir / f"{run_id}.json"
    worker = _worker_info()
    if rank_zero:
        sweep.running_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(worker))
    started = time.perf_counter()
    try:
        outcome: RunResult | Exception = sweep.executor(config, sweep.env, run_id)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded; the sweep goes on
        outcome = exc
    finally:
        if rank_zero:
            marker.unlink(missing_ok=True)
    record = _record(sweep, config, run_id, outcome, time.perf_counter() - started, worker)
    if rank_zero:
        ResultStore(sweep.results_dir).append(record)
    return record


def _record(
    sweep: Sweep,
    config: Mapping[str, Any],
    run_id: str,
    outcome: RunResult | Exception,
    elapsed_s: float,
    worker: Mapping[str, Any],
) -> dict[str, Any]:
    """The run's record: done when it returned metrics that are all finite, else failed."""
    if isinstance(outcome, Exception):
        status, metrics = "failed", {}
        error = "".join(traceback.format_exception_only(type(outcome), outcome)).strip()
        timing = {"total_s": elapsed_s}
    else:
        status, error, metrics = "done", None, outcome.metrics
        timing = {**outcome.timing, "total_s": outcome.timing.get("share_s", elapsed_s)}
        bad = non_finite(metrics)
        if not metrics:
            status, error = "failed", "the run returned no metrics; it is not done"
        elif bad:
            shown = ", ".join(f"{k}={metrics[k]}" for k in bad[:5])
            status, error = "failed", f"non-finite metric(s): {shown}; the run is not done"
    return make_record(
        run_id, sweep.experiment, config, metrics, status, error, timing, worker=worker
    )


def run_task(sweep: Sweep, task: Task) -> list[dict[str, Any]]:
    """Execute one task (a run, or runs that train together) and return its records."""
    if isinstance(task, tuple):
        return [run_one(sweep, *task)]
    if sweep.ensemble_executor is None or not is_launch_rank_zero() or len(task) == 1:
        return [run_one(sweep, config, run_id) for config, run_id in task]
    return run_ensemble(sweep, task)


def run_ensemble(sweep: Sweep, runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Train ``runs`` as one ensemble and record each as if run alone.

    Each run's lock is taken first; runs locked by another sweep, or found done (or failed
    during this sweep) in the store, are skipped as :func:`run_one` skips them, and the rest
    train together. A failure of the whole ensemble fails each of its runs with its error.
    """
    assert sweep.ensemble_executor is not None
    records: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        todo: list[Run] = []
        latest = ResultStore(sweep.results_dir).latest()
        for config, run_id in runs:
            if not stack.enter_context(run_lock(sweep.running_dir, run_id)):
                records.append(_skipped(run_id, "running in another sweep (its lock is held)"))
                continue
            skip = _skip_reason(latest.get(run_id), sweep.started)
            if skip is not None:
                records.append(_skipped(run_id, skip))
                continue
            todo.append((config, run_id))
        if len(todo) == 1:
            return [*records, _execute_and_record(sweep, *todo[0], rank_zero=True)]
        if not todo:
            return records
        worker = _worker_info()
        markers = [sweep.running_dir / f"{run_id}.json" for _, run_id in todo]
        sweep.running_dir.mkdir(parents=True, exist_ok=True)
        for marker in markers:
            marker.write_text(json.dumps(worker))
        started = time.perf_counter()
        try:
            outcomes = list(
                sweep.ensemble_executor([c for c, _ in todo], sweep.env, [i for _, i in todo])
            )
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the whole ensemble failed: so did each of its runs
            outcomes = [exc] * len(todo)
        finally:
            for marker in markers:
                marker.unlink(missing_ok=True)
        share = (time.perf_counter() - started) / len(todo)
        store = ResultStore(sweep.results_dir)
        for (config, run_id), outcome in zip(todo, outcomes, strict=True):
            if not isinstance(outcome, Exception):
                outcome.timing.setdefault("share_s", share)
            record = _record(sweep, config, run_id, outcome, share, worker)
            store.append(record)
            records.append(record)
    return records


class Launcher(ABC):
    """Executes ``(config, run_id)`` pairs and reports each finished record to ``progress``."""

    workers: int = 1

    @abstractmethod
    def launch(self, sweep: Sweep, runs: Sequence[Task], progress: Progress) -> None: ...


def task_size(task: Task) -> int:
    """How many runs (records) a task yields."""
    return 1 if isinstance(task, tuple) else len(task)


class SerialLauncher(Launcher):
    """One task after another, in this process."""

    def launch(self, sweep, runs, progress) -> None:
        for task in runs:
            for record in run_task(sweep, task):
                progress(record)


def _pool_worker(
    sweep: Sweep,
    device: str | None,
    use_gpu: bool,
    threads: int,
    tasks: mp.Queue,
    results: mp.Queue,
) -> None:
    """A pool process: pin to ``device``, then run tasks until the sentinel ``None``."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device  # before anything initialises CUDA
    import torch

    torch.set_num_threads(threads)
    devices = replace(sweep.env.devices, gpus=1 if use_gpu else 0)
    local = replace(sweep, env=replace(sweep.env, devices=devices))
    while (task := tasks.get()) is not None:
        for record in run_task(local, task):
            results.put(record)


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """While the pool runs, SIGTERM (``kill``, a scheduler's stop) raises ``SystemExit`` in the
    parent, so that its ``finally`` stops the workers instead of leaving them orphaned and
    training on (as they did under a plain ``kill`` of the sweep)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class PoolLauncher(Launcher):
    """``workers`` processes taking whole runs from a shared queue.

    With ``device_ids`` each worker is pinned to one of them through ``CUDA_VISIBLE_DEVICES``
    and trains on it (``use_gpu``); without, the workers share the CPU, each with
    ``cpu_count // workers`` threads.
    """

    def __init__(
        self, workers: int, device_ids: Sequence[str] | None = None, use_gpu: bool = True
    ) -> None:
        if workers < 1:
            raise ValueError(f"a pool needs at least one worker, got {workers}")
        if device_ids is not None and len(device_ids) != workers:
            raise ValueError(f"{workers} workers need {workers} device ids, got {device_ids}")
        self.workers = workers
        self.device_ids = list(device_ids) if device_ids is not None else None
        self.use_gpu = use_gpu and device_ids is not None

    def launch(self, sweep, runs, progress) -> None:
        ctx = mp.get_context("spawn")
        tasks, results = ctx.Queue(), ctx.Queue()
        for run in runs:
            tasks.put(run)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        procs = []
        with _terminate_raises():
            self._run_pool(ctx, sweep, runs, progress, tasks, results, threads, procs)

    def _run_pool(self, ctx, sweep, runs, progress, tasks, results, threads, procs) -> None:
        for i in range(self.workers):
            device = self.device_ids[i] if self.device_ids is not None else None
            tasks.put(None)
            proc = ctx.Process(
                target=_pool_worker,
                args=(sweep, device, self.use_gpu, threads, tasks, results),
                name=f"ntdh-worker-{i}",
                daemon=True,
            )
            proc.start()
            procs.append(proc)
        try:
            remaining = sum(task_size(task) for task in runs)
            while remaining:
                try:
                    record = results.get(timeout=1.0)
                except queue.Empty:
                    if not any(p.is_alive() for p in procs):
                        codes = [p.exitcode for p in procs]
                        raise RuntimeError(
                            f"every pool worker exited (exit codes {codes}) with {remaining} "
                            "run(s) unfinished; rerun the command to resume them"
                        ) from None
                    continue
                progress(record)
                remaining -= 1
            for proc in procs:
                proc.join()
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()


class _SubmititRun:
    """The callable a SLURM job runs; requeues itself when preempted or timed out."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep

    def __call__(self, config: Mapping[str, Any], run_id: str) -> dict[str, Any]:
        return run_one(self.sweep, config, run_id)

    def checkpoint(self, config: Mapping[str, Any], run_id: str) -> Any:
        """submitit calls this on preemption / timeout: resubmit the same run.

        The run resumes from its last epoch checkpoint, see :mod:`ntdh_bench.checkpointing`.
        """
        import submitit

        return submitit.helpers.DelayedSubmission(_SubmititRun(self.sweep), config, run_id)


@dataclass
class SlurmOptions:
    partition: str | None = None
    time_min: int = 240
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    array_parallelism: int = 64
    cluster: str | None = None  # None: SLURM when available; "local" or "debug" for tests
    wait: bool = True


class SubmititLauncher(Launcher):
    """An array job of runs through submitit; each job runs one run."""

    def __init__(self, options: SlurmOptions) -> None:
        try:
            import submitit  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "--launcher slurm needs submitit: pip install 'ntdh-bench[slurm]'"
            ) from exc
        self.options = options

    def executor(self, folder: Path) -> Any:
        import submitit

        opts = self.options
        executor = submitit.AutoExecutor(folder=folder, cluster=opts.cluster)
        params: dict[str, Any] = dict(
            timeout_min=opts.time_min,
            gpus_per_node=opts.gpus_per_job,
            tasks_per_node=1,
            cpus_per_task=opts.cpus_per_job,
            slurm_array_parallelism=opts.array_parallelism,
            name="ntdh",
        )
        if opts.partition:
            params["slurm_partition"] = opts.partition
        executor.update_parameters(**params)
        return executor

    def launch(self, sweep, runs, progress) -> None:
        import submitit

        executor = self.executor(sweep.results_dir / "submitit")
        devices = DeviceConfig(
            gpus=self.options.gpus_per_job,
            strategy=sweep.env.devices.strategy,
            num_nodes=sweep.env.devices.num_nodes,
        )
        job_sweep = replace(sweep, env=replace(sweep.env, devices=devices))
        flat = [run for task in runs for run in ([task] if isinstance(task, tuple) else task)]
        configs = [dict(config) for config, _ in flat]  # one job per run: no ensembles here
        run_ids = [run_id for _, run_id in flat]
        jobs = executor.map_array(_SubmititRun(job_sweep), configs, run_ids)
        print(
            f"submitted {len(jobs)} job(s) to {executor.cluster}: "
            f"{jobs[0].job_id if jobs else ''}... logs in {sweep.results_dir / 'submitit'}"
        )
        if not self.options.wait:
            return
        for job in submitit.helpers.as_completed(jobs):
            try:
                progress(job.result())
            except Exception as exc:  # the job itself died (node failure, OOM kill)
                progress({"run_id": "?", "status": "failed", "error": str(exc)})
