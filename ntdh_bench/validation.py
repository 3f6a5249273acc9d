"""Typed, checked config sections: values parsed by type, unknown keys refused with the nearest
valid key suggested, ranges checked; every failure is a :class:`ConfigError` naming the entry.

Fixed sections (training schedules, masks) are pydantic models; plug-in sections (a dataset's,
a model's, a distiller's options) are checked against the signature of the class that takes
them, with the defaults of that signature filled in, so a run's config names every setting.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model


class ConfigError(ValueError):
    """A run config entry that is unknown, of the wrong type or out of range."""


class Section(BaseModel):
    """Base of the fixed config sections: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def suggest(key: str, options: Iterable[str]) -> str:
    """``"; did you mean 'epochs'?"`` when an option is close to ``key``, else ``""``."""
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _message(err: ValidationError, where: str, options: Iterable[str]) -> str:
    options = sorted(options)
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in (where, *e["loc"]) if p != "")
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            lines.append(f"{path}: unknown option{suggest(key, options)} (options: {options})")
        else:
            lines.append(f"{path}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def validate_section(model: type[Section], data: Mapping[str, Any] | None, where: str) -> dict:
    """``data`` checked against ``model`` and completed with its defaults, as JSON values."""
    try:
        return model.model_validate(dict(data or {})).model_dump(mode="json")
    except ValidationError as err:
        raise ConfigError(_message(err, where, model.model_fields)) from None


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # an annotation that cannot be evaluated: check that entry by value only
        return {}


def validate_arguments(
    func: Callable[..., Any],
    data: Mapping[str, Any],
    where: str,
    skip: Iterable[str] = (),
    fill_defaults: bool = True,
) -> dict[str, Any]:
    """``data`` checked against the keyword parameters of ``func`` (types from its hints).

    Parameters named in ``skip`` (and ``self``, ``*args``, ``**kwargs``) are not options.
    With ``fill_defaults`` the result holds every option, its default where ``data`` has none.
    """
    skip = {"self", *skip}
    params = {
        name: p
        for name, p in inspect.signature(func).parameters.items()
        if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    unknown = [k for k in data if k not in params]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"{where}.{key}: unknown option{suggest(key, params)} (options: {sorted(params)})"
        )
    missing = [n for n, p in params.items() if p.default is p.empty and n not in data]
    if missing:
        raise ConfigError(f"{where}: missing required option(s) {missing}")
    hints = _hints(func)
    fields = {
        name: (hints.get(name, Any), ... if p.default is p.empty else p.default)
        for name, p in params.items()
        if fill_defaults or name in data
    }
    model = create_model(
        f"{where}_options",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )
    try:
        checked = model.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_message(err, where, params)) from None
    return checked.model_dump(mode="json")
