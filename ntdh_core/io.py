"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every cache entry, table, figure, grid and checkpoint of the suite is written through
:func:`atomic_write`: the bytes go to a hidden temporary file in the same folder (same file
system), which is then renamed over the target in one ``os.replace``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _temporary_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: str | Path, data: str | bytes | Callable[[Path], Any]) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    ``data`` is text, bytes, or a function that writes the temporary file it is given (for
    writers that want a path: ``torch.save``, ``fig.savefig``, ``np.savez``). The folder is
    created; a failed write leaves the target as it was and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
