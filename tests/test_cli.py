"""The ``ntdh`` command's status and datasets subcommands."""

from __future__ import annotations

from experiments.gap_sweep import GapSweep
from ntdh_bench.cli import main


def test_status_reports_a_finished_sweep_and_fails_on_a_missing_one(tmp_path, capsys):
    GapSweep.main(
        [
            "--seeds",
            "1",
            "--gaps",
            "0",
            "--set",
            "teacher.epochs=1",
            "--set",
            "student.epochs=1",
            "--set",
            "dataset.n_samples=300",
            "--set",
            "dataset.n_train=200",
            "--results-dir",
            str(tmp_path / "results"),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    capsys.readouterr()
    assert main(["status", str(tmp_path / "results" / "fig3")]) == 0
    out = capsys.readouterr().out
    assert "fig3: 3 runs" in out and "done     3" in out and "pending  0" in out
    assert main(["status", str(tmp_path / "results" / "nothing")]) == 2
    assert "no sweep has started" in capsys.readouterr().err


def test_datasets_lists_every_registered_datamodule(capsys):
    from datamodules import DATAMODULES

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in DATAMODULES:
        assert name in out
    assert "synthetic" in out and "available" in out
