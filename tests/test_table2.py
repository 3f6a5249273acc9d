"""Table II end to end on the offline digits at the --quick size: layout, figures, verdicts."""

from __future__ import annotations

import csv

import pytest

from experiments.table2 import Table2


@pytest.fixture
def table2():
    return Table2


def test_quick_table2_on_digits_writes_the_paper_layout(table2, tmp_path, capsys, out_dirs):
    argv = ["--dataset", "digits", "--quick", "--seeds", "2", "--methods", "dkd", "sp"]
    argv += ["--ratios", "0.5", *out_dirs]
    records = table2.main(argv)
    # per seed: teacher, 3 masked teachers, no-KD student, 2 unmasked KD, 2 x 3 masked KD
    assert len(records) == 2 * (1 + 3 + 1 + 2 + 2 * 3)
    out = tmp_path / "results" / "table2_digits"
    for name in ("table2.md", "table2.csv", "table2.tex", "fig9a.png", "fig10.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (tmp_path / "results" / "table2").exists()  # digits never poses as MNIST

    rows = list(csv.reader((out / "table2.csv").open()))
    assert rows[0] == [
        "",
        "mask",
        *(f"{m}_{s}" for m in ("DKD", "SP", "teacher used (%)") for s in ("mean", "ci95", "n")),
    ]
    assert [r[:2] for r in rows[1:]] == [
        ["w/o KD", ""],
        ["w/o mask", ""],
        ["w mask (λ = 0.50)", "T"],
        ["", "R"],
        ["", "F"],
    ]
    for row in rows[1:]:  # every cell is a percentage over two seeds
        for mean, n in ((row[2], row[4]), (row[5], row[7])):
            assert 0.0 <= float(mean) <= 100.0 and n == "2"
    assert rows[1][8] == "" and all(0 < float(row[8]) <= 100 for row in rows[2:])  # teachers
    assert rows[1][2] == rows[1][5]  # one shared no-KD student

    md = (out / "table2.md").read_text()
    assert "not MNIST" in md and "| w/o KD |" in md and "| DKD | SP |" in md
    tex = (out / "table2.tex").read_text()
    assert r"\begin{tabular}{lcccc}" in tex

    verdicts = (out / "verdicts.md").read_text()
    for who in ("DKD", "SP", "Mean over methods"):
        for claim in (
            "`true` beats unmasked KD",
            "`true` beats `random`",
            "`random` beats `false`",
        ):
            assert f"{who}: {claim} at ratio 0.5: " in verdicts
    assert verdicts.count("paired difference") == 9 and "not judged" not in verdicts
    assert "`random` beats `false` at ratio 0.5" in capsys.readouterr().out

    events = list((tmp_path / "runs" / "table2_digits" / "figures").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)

    lines = (out / "runs.jsonl").read_text().count("\n")
    table2.main(argv)  # resumable: a rerun runs nothing
    assert (out / "runs.jsonl").read_text().count("\n") == lines
