"""The on-disk cache of trained networks, saliencies and masks: one layout, verified on load.

An entry is ``<cache_dir>/<kind>/<hash of its identity>/`` holding its files and
``meta.json`` (the identity, free-form info such as metrics, and the SHA-256 of every file).
Files are written atomically and the meta last, so an entry with a meta is complete. Reading
checks each file's hash: an entry that is truncated, edited or foreign is moved aside to
``<cache_dir>/<kind>/.bad/`` with a warning naming it, and reads as missing, so that the caller
rebuilds it instead of failing every dependent run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ntdh_bench.results import config_hash
from ntdh_core.io import atomic_write

log = logging.getLogger(__name__)

META = "meta.json"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CacheEntry:
    """One cache entry, named by the hash of ``identity``."""

    def __init__(self, cache_dir: str | Path, kind: str, identity: Mapping[str, Any]) -> None:
        self.identity = dict(identity)
        self.key = config_hash(identity)
        self.folder = Path(cache_dir) / kind / self.key

    def path(self, name: str) -> Path:
        return self.folder / name

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on this entry (``<kind>/.locks/<hash>.lock``), so that two worker
        processes that need the same entry build it once: the second waits, then reads it."""
        locks = self.folder.parent / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{self.key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def write(self, tensors: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> None:
        """Save each object of ``tensors`` as ``<name>`` (torch format), then the meta."""
        digests = {}
        for name, obj in tensors.items():
            path = atomic_write(self.path(name), lambda tmp, obj=obj: torch.save(obj, tmp))
            digests[name] = _digest(path)
        meta = {
            "identity": self.identity,
            "info": dict(info or {}),
            "sha256": digests,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write(self.path(META), json.dumps(meta, indent=2, default=str))

    def read(self, *names: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(objects by name, info)``, or None when the entry is missing or bad (moved aside)."""
        meta_path = self.path(META)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            objects = {}
            for name in names:
                path = self.path(name)
                if meta["sha256"].get(name) != _digest(path):
                    raise ValueError(f"{path} does not match the hash in its {META}")
                objects[name] = torch.load(path, map_location="cpu", weights_only=True)
            return objects, dict(meta.get("info", {}))
        except (OSError, ValueError, KeyError, RuntimeError, EOFError) as err:
            self.discard(f"{type(err).__name__}: {err}")
            return None

    def discard(self, reason: str) -> None:
        """Move the entry aside (kept for inspection) so that it is rebuilt."""
        if not self.folder.exists():
            return
        bad = self.folder.parent / ".bad" / f"{self.key}-{os.getpid()}-{int(time.time())}"
        bad.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.folder), str(bad))
        log.warning(
            "cache entry %s is unusable (%s); moved to %s and rebuilt", self.folder, reason, bad
        )
