"""Names a person can read: a run's one-line description and its TensorBoard folder.

``fig8/kd-gap0.5-true-0.25-s1-3f2a9c``: role, what distinguishes the run (gap, distiller,
weights, mask), seed, and the run id's first six characters last, so that folders sort by what
they are and stay unique.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_parts(config: Mapping[str, Any]) -> list[str]:
    """The distinguishing parts of a run, in reading order."""
    parts = [config["role"]]
    if config.get("modality"):
        parts.append(config["modality"])
    dataset = config["dataset"]
    if "gap" in dataset:
        parts.append(f"gap{_num(dataset['gap'])}")
    distiller = config.get("distiller")
    if distiller:
        parts.append(distiller["name"])
        if "alpha" in distiller and "beta" in distiller:
            parts.append(f"a{_num(distiller['alpha'])}b{_num(distiller['beta'])}")
    for key, tag in (("feature_mask", "fm"), ("sample_mask", "sm")):
        mask = config.get(key)
        if mask:
            ratio = mask.get("ratio")
            parts.append(f"{tag}-{mask['kind']}" + ("" if ratio is None else f"-{_num(ratio)}"))
    if config.get("protocol", "suite") != "suite":
        parts.append(config["protocol"])
    parts.append(f"s{config['seed']}")
    return parts


def run_folder_name(config: Mapping[str, Any], run_id: str) -> str:
    """``kd-gap0.5-fm-true-0.25-s1-3f2a9c``: safe as a folder name."""
    return _UNSAFE.sub("_", "-".join([*run_parts(config), run_id[:6]]))


def describe(config: Mapping[str, Any], run_id: str) -> str:
    """One line for grids, progress and errors: ``3f2a9c1b0e4d kd gap0.5 ... seed 1``."""
    parts = run_parts(config)
    return f"{run_id} {' '.join(parts[:-1])} {config['dataset']['name']} seed={config['seed']}"
