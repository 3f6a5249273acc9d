"""The resumable result store: one JSON line per finished (or failed) run.

``results/<experiment>/runs.jsonl`` holds one record per run, keyed by ``run_id``, the hash of
the run's full resolved config (:func:`config_hash`). A sweep that is started again skips
every run whose latest record says ``done``. A line that is not a valid record is skipped with
a warning naming the file and line, and counted (:attr:`ResultStore.skipped`). Appends are
single ``write`` calls of a whole line on a file opened for appending, flushed and fsynced; a
process killed mid-write can at worst leave a torn last line, which readers skip with a
warning and the next append terminates, so the store stays readable at every moment. An
exclusive ``flock`` serialises writers, so pool workers and cluster jobs can share one store.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRACKED_LIBRARIES = ("torch", "lightning", "torchmetrics", "numpy", "scikit-learn", "ntdh-bench")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal configs give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple | set):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"cannot put {type(obj).__name__} into a run config: {obj!r}")


def config_hash(config: Mapping[str, Any], length: int = 12) -> str:
    """Identity of a run: a short SHA-256 of its canonical JSON (seed included)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:length]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@functools.lru_cache(maxsize=4)
def git_commit(cwd: Path | None = None) -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ; ``unknown`` outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def make_record(
    run_id: str,
    experiment: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, float] | None,
    status: str = "done",
    error: str | None = None,
    timing: Mapping[str, float] | None = None,
    worker: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete record: config, seed, metrics, status, versions, commit, host and times."""
    return {
        "run_id": run_id,
        "experiment": experiment,
        "status": status,
        "seed": config.get("seed"),
        "config": dict(config),
        "metrics": dict(metrics or {}),
        "error": error,
        "timing": dict(timing or {}),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "host": platform.node(),
        "worker": dict(worker or {}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _not_a_record(record: Any) -> str | None:
    """Why a parsed line is not a run record, or None when it is one."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not a record"
    missing = [k for k in ("run_id", "status") if not isinstance(record.get(k), str)]
    if missing:
        return f"is not a record (no string {' or '.join(repr(k) for k in missing)})"
    for key in ("config", "metrics"):
        present = key in record and record[key] is not None
        if (present or record["status"] == "done") and not isinstance(record.get(key), dict):
            return f"is not a record ({key!r} is not an object)"
    return None


class ResultStore:
    """Append-only JSON-lines store of run records in ``<root>/runs.jsonl``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / "runs.jsonl"
        self.skipped = 0  # lines that were not records, at the last read

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line, durably."""
        if "run_id" not in record or "status" not in record:
            raise ValueError("a record needs 'run_id' and 'status'")
        self.root.mkdir(parents=True, exist_ok=True)
        line = (canonical_json(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # several workers may finish at once
            if self._ends_torn():
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock

    def _ends_torn(self) -> bool:
        size = self.path.stat().st_size if self.path.exists() else 0
        if size == 0:
            return False
        with self.path.open("rb") as f:
            f.seek(size - 1)
            return f.read(1) != b"\n"

    def records(self) -> list[dict[str, Any]]:
        """Every valid record in file order.

        A line that is not a record (torn by an interrupted write, not JSON, or JSON without a
        string ``run_id`` and ``status``) is skipped with a warning naming the file and line;
        how many were skipped is in :attr:`skipped` afterwards.
        """
        self.skipped = 0
        if not self.path.exists():
            return []
        out = []
        with self.path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                problem = None
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    problem = "is not JSON (an interrupted write?)"
                else:
                    problem = _not_a_record(record)
                if problem is None:
                    out.append(record)
                    continue
                self.skipped += 1
                log.warning("%s:%d %s; skipped", self.path, number, problem)
        return out

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of each run id."""
        return {r["run_id"]: r for r in self.records()}

    def done_ids(self) -> set[str]:
        return {rid for rid, r in self.latest().items() if r["status"] == "done"}

    def done_records(self, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Finished records, restricted to ``run_ids`` when given (a sweep's current grid)."""
        wanted = None if run_ids is None else set(run_ids)
        return [
            r
            for rid, r in self.latest().items()
            if r["status"] == "done" and (wanted is None or rid in wanted)
        ]


def config_get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """``config_get(c, "dataset.gap")`` reads ``c["dataset"]["gap"]``."""
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def metric_by(
    records: Iterable[Mapping[str, Any]],
    by: str,
    metric: str,
    where: Mapping[str, Any] | None = None,
) -> dict[Any, list[float]]:
    """Values of ``metric`` grouped by the config entry ``by``, over records matching ``where``.

    ``where`` maps dotted config paths to required values, e.g. ``{"role": "kd"}``.
    """
    groups: dict[Any, list[float]] = {}
    for record in records:
        config = record["config"]
        if any(config_get(config, k) != v for k, v in (where or {}).items()):
            continue
        if metric not in record["metrics"]:
            continue
        groups.setdefault(config_get(config, by), []).append(float(record["metrics"][metric]))
    return groups
