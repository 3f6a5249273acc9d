"""The weight sweep end to end on a RAVDESS fixture in the published layout (wav + mp4)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "datamodules"))
from ravdess_fixtures import write_ravdess

from experiments.table3 import Table3
from experiments.weight_sweep import WeightSweep


def test_quick_weight_sweep_runs_on_a_ravdess_fixture(tmp_path, monkeypatch, out_dirs):
    write_ravdess(tmp_path / "data" / "ravdess")
    monkeypatch.setenv("NTDH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("NTDH_CACHE", str(tmp_path / "cache"))
    fig7b = WeightSweep
    argv = ["--dataset", "ravdess", "--seeds", "1", "--values", "0", "8"]
    argv += ["--set", "teacher.epochs=1", "--set", "student.epochs=1", *out_dirs]
    records = fig7b.main(argv)
    roles = sorted(r["config"]["role"] for r in records)
    assert roles == ["kd"] * 5 + ["student", "teacher"]  # alpha, beta each at 0 and 8; 1 and 1
    out = tmp_path / "results" / "weight_sweep_ravdess"
    for name in ("weight_sweep.md", "weight_sweep.csv", "weight_sweep.tex", "weight_sweep.png"):
        assert (out / name).stat().st_size > 0, name
    assert all(r["config"]["model"]["name"] == "cnn2d" for r in records)


def test_quick_table3_on_a_ravdess_fixture_writes_the_paper_layout(
    tmp_path, monkeypatch, out_dirs, capsys
):
    write_ravdess(tmp_path / "data" / "ravdess")
    monkeypatch.setenv("NTDH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("NTDH_CACHE", str(tmp_path / "cache"))
    table3 = Table3
    argv = ["--quick", "--seeds", "1", "--methods", "dkd", "sp", "--ratios", "0.5", *out_dirs]
    records = table3.main(argv)
    # teacher, 3 masked (scored) teachers, no-KD student, 2 methods x (unmasked KD, the scored
    # network unmasked, 3 kinds masked)
    assert len(records) == 1 + 3 + 1 + 2 * 2 + 2 * 3
    out = tmp_path / "results" / "table3"
    for name in ("table3.md", "table3.csv", "table3.tex", "fig9b.png", "verdicts.md"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "fig10.png").exists()  # no 28x28 input to draw masks on
    text = (out / "table3.md").read_text()
    assert "Table III" in text and "| w/o KD |" in text and "| DKD | SP |" in text
    masked = [r["config"]["feature_mask"] for r in records if "feature_mask" in r["config"]]
    assert all(m["layer"] == "fc.1" and m["teacher"] == "scored" for m in masked)
    assert "the Eq. 26-trained network it was scored on" in text
    assert not list((tmp_path / "cache" / "teachers").glob("*/model.pt"))[1:]  # one: unmasked
