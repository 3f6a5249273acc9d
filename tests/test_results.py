"""The result store: hashing, records, resume, torn lines; statistics and table writers."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from scipy import stats as scipy_stats

from ntdh_bench.results import ResultStore, config_hash, make_record, metric_by
from ntdh_bench.stats import Estimate, mean_ci
from ntdh_bench.tables import Table


def test_config_hash_ignores_key_order_and_sees_every_value():
    a = {"seed": 0, "dataset": {"gap": 0.2, "name": "synthetic"}}
    b = {"dataset": {"name": "synthetic", "gap": 0.2}, "seed": 0}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "seed": 1})
    assert config_hash(a) != config_hash({**a, "dataset": {"gap": 0.4, "name": "synthetic"}})


def test_record_carries_config_seed_metrics_versions_and_commit():
    record = make_record("abc", "fig3", {"seed": 4, "role": "kd"}, {"test/acc": 0.5})
    assert record["seed"] == 4 and record["metrics"] == {"test/acc": 0.5}
    assert record["status"] == "done" and record["experiment"] == "fig3"
    assert {"torch", "lightning", "python"} <= set(record["versions"])
    assert record["git_commit"]


def test_store_appends_and_rereads_records(tmp_path):
    store = ResultStore(tmp_path / "exp")
    store.append(make_record("r1", "exp", {"seed": 0}, {"m": 1.0}))
    store.append(make_record("r2", "exp", {"seed": 1}, {}, status="failed", error="boom"))
    assert [r["run_id"] for r in store.records()] == ["r1", "r2"]
    assert store.done_ids() == {"r1"}
    store.append(make_record("r2", "exp", {"seed": 1}, {"m": 2.0}))  # a retry that succeeded
    assert store.done_ids() == {"r1", "r2"}
    assert [r["metrics"]["m"] for r in store.done_records(["r2"])] == [2.0]


def test_a_torn_last_line_is_skipped_and_the_next_append_stays_readable(tmp_path):
    store = ResultStore(tmp_path)
    store.append(make_record("r1", "exp", {"seed": 0}, {"m": 1.0}))
    full_line = json.dumps(make_record("r2", "exp", {"seed": 1}, {"m": 2.0}))
    with store.path.open("a") as f:
        f.write(full_line[: len(full_line) // 2])  # killed mid-write
    assert store.done_ids() == {"r1"}
    store.append(make_record("r3", "exp", {"seed": 2}, {"m": 3.0}))
    assert store.done_ids() == {"r1", "r3"}


def test_metric_by_groups_matching_records():
    records = [
        {"config": {"role": "kd", "dataset": {"gap": g}}, "metrics": {"acc": v}}
        for g, v in [(0.0, 0.5), (0.0, 0.7), (1.0, 0.2)]
    ] + [{"config": {"role": "teacher", "dataset": {"gap": 0.0}}, "metrics": {"acc": 0.9}}]
    assert metric_by(records, "dataset.gap", "acc", {"role": "kd"}) == {0.0: [0.5, 0.7], 1.0: [0.2]}


def test_mean_ci_is_the_student_t_interval():
    values = [0.61, 0.64, 0.58, 0.66]
    est = mean_ci(values)
    sem = scipy_stats.sem(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 4, scale=sem)
    assert est.low == pytest.approx(low) and est.high == pytest.approx(high)
    assert est.n == 4
    one = mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.half_width) and one.format(2) == "0.50"
    assert mean_ci([]).n == 0 and mean_ci([]).format() == "n/a"


def test_table_writes_markdown_csv_and_latex(tmp_path):
    table = Table("T", ["method", "acc (%)", "note"], digits=[0, 1, 0], caption="c_1 & 50%")
    table.add_row("kd", Estimate(71.44, 0.81, 3), "x")
    table.add_row("fitnet", Estimate(65.0, math.nan, 1), "")
    paths = table.write(tmp_path, "t")
    assert [p.suffix for p in paths] == [".md", ".csv", ".tex"]
    md = (tmp_path / "t.md").read_text()
    assert "| kd | 71.4 ± 0.8 | x |" in md and "| fitnet | 65.0 |  |" in md
    rows = list(csv.reader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert rows[0] == ["method", "acc (%)_mean", "acc (%)_ci95", "acc (%)_n", "note"]
    assert rows[1][:4] == ["kd", "71.44", "0.81", "3"] and rows[2][2] == ""
    tex = (tmp_path / "t.tex").read_text()
    assert r"71.4 $\pm$ 0.8" in tex and r"c\_1 \& 50\%" in tex and r"\toprule" in tex
    with pytest.raises(ValueError, match="cells"):
        table.add_row("too", "few")
