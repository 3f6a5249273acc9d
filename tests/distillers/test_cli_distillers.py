"""``ntdh distillers`` lists every registered method with its defaults."""

from __future__ import annotations

import json

import pytest

from ntdh_bench.cli import main
from ntdh_bench.distillers import DISTILLERS


def test_ntdh_distillers_prints_every_method_with_its_defaults(capsys):
    assert main(["distillers"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name, cls in DISTILLERS.items():
        assert any(line.startswith(f"{name} ") for line in lines), name
        for key, value in cls.defaults().items():
            assert f"{key}={value!r}" in out
    assert "weight=0.8" in out and "num_negatives=16384" in out


def test_ntdh_distillers_json_matches_the_registry(capsys):
    assert main(["distillers", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(listing) == set(DISTILLERS)
    assert listing["dkd"]["defaults"] == {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20}
    assert listing["crd"]["tasks"] == ["classification", "dense"]


def test_ntdh_without_a_command_shows_usage():
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
