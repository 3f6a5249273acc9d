"""Where the suite reads data and keeps caches, from the environment.

``$NTDH_DATA`` (default ``./data``) holds the datasets; ``$NTDH_CACHE`` (default ``./cache``)
the trained teachers, saliencies and extracted features. Every default location of the suite
comes from here, so one variable (or ``--cache-dir``) moves them all.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """``$NTDH_DATA``, else ``./data``."""
    return Path(os.environ.get("NTDH_DATA", "data"))


def cache_root() -> Path:
    """``$NTDH_CACHE``, else ``./cache``."""
    return Path(os.environ.get("NTDH_CACHE", "cache"))
