"""Where a sweep stands: done, running, failed and pending runs, and the time left.

A sweep writes its grid (``grid.json``: every run id with a one-line description) when it
starts; running runs leave markers in ``running/``; finished ones are records in
``runs.jsonl``. :func:`sweep_status` combines the three, so ``ntdh status results/<experiment>``
works from any shell while the sweep runs, on this machine or on a cluster's shared disk.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ntdh_bench.naming import describe
from ntdh_bench.results import ResultStore
from ntdh_core.io import atomic_write

log = logging.getLogger(__name__)

GRID_FILE = "grid.json"


def write_grid(results_dir: Path, experiment: str, specs: Sequence[Any]) -> None:
    """Record the sweep's run ids (atomically) so that status can count what is pending."""
    results_dir.mkdir(parents=True, exist_ok=True)
    grid = {
        "experiment": experiment,
        "written_at": time.time(),
        "runs": {s.run_id: s.describe() for s in specs},
    }
    atomic_write(results_dir / GRID_FILE, json.dumps(grid, indent=1))


def read_grid(results_dir: Path, latest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``grid.json``; when it is damaged (not JSON, or not a grid) it is reported, moved aside
    to ``grid.json.bad`` and rebuilt from what the folder still shows: the runs recorded in
    ``runs.jsonl`` and the running markers (runs never started are then unknown until the
    sweep is started again, which writes the whole grid)."""
    path = results_dir / GRID_FILE
    problem = None
    try:
        grid = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"{type(err).__name__}: {err}"
    else:
        if not (
            isinstance(grid, dict)
            and isinstance(grid.get("runs"), dict)
            and all(isinstance(v, str) for v in grid["runs"].values())
        ):
            problem = "not a grid (needs 'runs': {run id: description})"
    if problem is None:
        grid.setdefault("experiment", results_dir.name)
        return grid
    os.replace(path, path.with_name(GRID_FILE + ".bad"))
    runs = {rid: describe_record(r) for rid, r in latest.items()}
    for marker in sorted((results_dir / "running").glob("*.json")):
        runs.setdefault(marker.stem, marker.stem)
    experiment = next((r.get("experiment") for r in latest.values()), None) or results_dir.name
    grid = {"experiment": experiment, "written_at": time.time(), "runs": runs, "rebuilt": True}
    atomic_write(path, json.dumps(grid, indent=1))
    log.warning(
        "%s is damaged (%s): moved to %s.bad and rebuilt from runs.jsonl and the running "
        "markers (%d runs; pending runs are counted again when the sweep restarts)",
        path,
        problem,
        GRID_FILE,
        len(runs),
    )
    return grid


def describe_record(record: dict[str, Any]) -> str:
    """A record's one-line description (as the grid has it), from its config."""
    try:
        return describe(record["config"], record["run_id"])
    except Exception:  # an old or partial config: the id still names the run
        return str(record["run_id"])


def _alive(marker: dict[str, Any]) -> bool:
    """A marker from a dead process on this host is stale (the run was killed)."""
    if marker.get("host") != socket.gethostname():
        return True  # another node: trust the marker
    try:
        os.kill(int(marker["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return False
    except PermissionError:
        return True
    return True


@dataclass
class SweepStatus:
    experiment: str
    total: int
    done: int
    failed: int
    running: list[str] = field(default_factory=list)
    interrupted: int = 0
    mean_run_s: float = float("nan")
    skipped_lines: int = 0
    grid_rebuilt: bool = False

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed - len(self.running)

    @property
    def eta_s(self) -> float:
        """Time left at the measured mean run time, with as many runs at once as now."""
        left = self.pending + len(self.running)
        parallel = max(1, len(self.running))
        return left * self.mean_run_s / parallel

    def render(self) -> str:
        eta = "unknown (no run finished yet)"
        if self.eta_s == self.eta_s:  # not NaN
            eta = _duration(self.eta_s)
        timed = self.mean_run_s == self.mean_run_s  # not NaN: some done run has a time
        mean = _duration(self.mean_run_s) if timed else "n/a"
        lines = [
            f"{self.experiment}: {self.total} runs",
            f"  done     {self.done}",
            f"  running  {len(self.running)}",
            f"  failed   {self.failed}" + ("  (rerun with --retry-failed)" if self.failed else ""),
            f"  pending  {self.pending}"
            + (f"  ({self.interrupted} interrupted, will resume)" if self.interrupted else ""),
            f"  mean run {mean}; ETA {eta}",
        ]
        if self.skipped_lines:
            lines.append(f"  warning: {self.skipped_lines} line(s) of runs.jsonl are not records")
        if self.grid_rebuilt:
            lines.append(
                f"  warning: {GRID_FILE} was damaged and rebuilt from the records; "
                "pending runs are unknown until the sweep restarts"
            )
        lines += [f"  > {r}" for r in self.running]
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def sweep_status(results_dir: str | Path) -> SweepStatus:
    """Status of the sweep whose results live in ``results_dir``."""
    results_dir = Path(results_dir)
    grid_path = results_dir / GRID_FILE
    if not grid_path.exists():
        raise FileNotFoundError(
            f"{grid_path} not found: no sweep has started in {results_dir} (run the "
            "experiment first, or pass --results-dir)"
        )
    store = ResultStore(results_dir)
    latest = store.latest()
    grid = read_grid(results_dir, latest)
    runs: dict[str, str] = grid["runs"]
    done = [r for i, r in latest.items() if i in runs and r["status"] == "done"]
    failed = sum(1 for i, r in latest.items() if i in runs and r["status"] == "failed")
    running, interrupted = [], 0
    finished = {r["run_id"] for r in done} | {i for i, r in latest.items() if i in runs}
    for marker_path in sorted((results_dir / "running").glob("*.json")):
        run_id = marker_path.stem
        if run_id not in runs or run_id in finished:
            continue
        try:
            marker = json.loads(marker_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if _alive(marker):
            since = _duration(time.time() - marker.get("started", time.time()))
            running.append(
                f"{runs[run_id]} (pid {marker.get('pid')} on {marker.get('host')}, for {since})"
            )
        else:
            interrupted += 1
    times = [r["timing"].get("total_s") for r in done if r.get("timing", {}).get("total_s")]
    mean = sum(times) / len(times) if times else float("nan")
    return SweepStatus(
        grid["experiment"],
        len(runs),
        len(done),
        failed,
        running,
        interrupted,
        mean,
        skipped_lines=store.skipped,
        grid_rebuilt=bool(grid.get("rebuilt")),
    )
