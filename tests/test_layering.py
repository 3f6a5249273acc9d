"""Imports only go down: experiments -> ntdh_bench -> models / datamodules -> ntdh_core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"ntdh_core": 0, "models": 1, "datamodules": 1, "ntdh_bench": 2, "experiments": 3}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_module_imports_a_higher_layer(package):
    upward = {
        str(path.relative_to(ROOT)): sorted(
            other for other in _imported_packages(path) if LAYERS[other] > LAYERS[package]
        )
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in upward.items() if v} == {}
