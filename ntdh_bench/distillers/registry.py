"""Distillers by name: ``DISTILLERS`` and ``build_distiller``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ntdh_bench.distillers.base import Distiller

DISTILLERS: dict[str, type[Distiller]] = {}


def register_distiller(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: make a distiller buildable by ``name`` from configs."""

    def add(cls: type[Distiller]) -> type[Distiller]:
        if name in DISTILLERS and DISTILLERS[name] is not cls:
            raise ValueError(f"distiller name {name!r} is already taken by {DISTILLERS[name]}")
        cls.name = name
        DISTILLERS[name] = cls
        return cls

    return add


def build_distiller(name: str, **overrides: Any) -> Distiller:
    """Build the distiller registered as ``name`` with its defaults, overridden by ``overrides``."""
    try:
        cls = DISTILLERS[name]
    except KeyError:
        raise ValueError(f"unknown distiller {name!r}; registered: {sorted(DISTILLERS)}") from None
    unknown = set(overrides) - set(cls.defaults()) - {"task"}
    if unknown:
        raise ValueError(
            f"distiller {name!r} has no option(s) {sorted(unknown)}; its options are "
            f"{cls.defaults()}"
        )
    return cls(**overrides)
