"""Experiments end to end on tiny synthetic data: Fig. 3, Table I, resume, failures, seeds."""

from __future__ import annotations

import pytest

from ntdh_bench.experiment import apply_overrides, load_config, run_config
from ntdh_bench.results import ResultStore
from ntdh_bench.runner import RunEnv, RunResult, execute_run, teacher_identity


def test_gamma_sweep_writes_table_figure_and_verdicts_and_resumes(
    tmp_path, capsys, experiment_script, tiny_args, out_dirs
):
    fig3 = experiment_script("gamma_sweep").GammaSweep
    argv = ["--seeds", "2", "--gaps", "0", "1", *tiny_args, *out_dirs]
    records = fig3.main(argv)
    assert len(records) == 2 * 2 * 3  # seeds x gaps x (teacher, no-KD, KD)
    out = tmp_path / "results" / "fig3"
    for name in ("fig3.md", "fig3.csv", "fig3.tex", "fig3.png", "verdicts.md"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "NCJSD grows faster than TCJSD" in printed and "| 1.0 |" in printed
    assert len(list((tmp_path / "cache" / "teachers").iterdir())) == 4  # one per gap and seed
    kd_logs = list((tmp_path / "runs" / "fig3").iterdir())
    assert len(kd_logs) == 8  # no-KD and KD students; teachers log under runs/teachers

    lines_before = ResultStore(out).path.read_text().count("\n")
    again = fig3.main(argv)  # a rerun skips every finished run
    assert ResultStore(out).path.read_text().count("\n") == lines_before
    assert sorted(r["run_id"] for r in again) == sorted(r["run_id"] for r in records)


def test_failed_runs_are_recorded_and_retried_on_request(
    tmp_path, capsys, experiment_script, tiny_args, out_dirs
):
    fig3 = experiment_script("gamma_sweep").GammaSweep
    argv = ["--seeds", "1", "--gaps", "0", *tiny_args, *out_dirs]
    experiment = fig3(fig3.parser().parse_args(argv))

    def flaky(config, env, run_id):
        if config["role"] == "student":
            raise RuntimeError("loss is NaN")
        return RunResult(
            {"test/acc": 0.5, "teacher/test/acc": 0.6, "test/tcjsd": 0.1, "test/ncjsd": 0.2}, {}
        )

    experiment.run(executor=flaky)
    latest = experiment.store.latest()
    statuses = sorted(r["status"] for r in latest.values())
    assert statuses == ["done", "done", "failed"]
    failed = next(r for r in latest.values() if r["status"] == "failed")
    assert "RuntimeError: loss is NaN" in failed["error"]
    assert "--retry-failed" in capsys.readouterr().err

    calls = []
    experiment.run(executor=lambda c, e, r: calls.append(r) or flaky(c, e, r))
    assert calls == []  # failed runs are not retried unless asked
    retry = fig3(fig3.parser().parse_args([*argv, "--retry-failed"]))
    retry.run(executor=lambda c, e, r: calls.append(c["role"]) or RunResult({}, {}))
    assert calls == ["student"]


def test_dry_run_lists_the_grid_without_running(tmp_path, capsys, experiment_script, out_dirs):
    fig3 = experiment_script("gamma_sweep").GammaSweep
    fig3.main(["--seeds", "1", "--gaps", "0", "0.5", "--dry-run", *out_dirs])
    out = capsys.readouterr().out
    assert "6 runs: 0 done or skipped, 6 to run" in out
    assert not (tmp_path / "results" / "fig3" / "runs.jsonl").exists()


def test_same_config_and_seed_give_the_same_numbers(tmp_path, tiny_args):
    base = apply_overrides(load_config("synthetic"), [s for s in tiny_args if s != "--set"])
    config = run_config(base, "kd", seed=1, dataset={"gap": 0.4, "data_seed": 1})
    first = execute_run(config, RunEnv(tmp_path / "r1", tmp_path / "c1"))
    second = execute_run(config, RunEnv(tmp_path / "r2", tmp_path / "c2"))
    assert first.metrics == second.metrics
    other = execute_run({**config, "seed": 2}, RunEnv(tmp_path / "r3", tmp_path / "c3"))
    assert other.metrics != first.metrics


def test_teacher_identity_ignores_student_settings():
    base = load_config("synthetic")
    kd = run_config(base, "kd", 0, {"gap": 0.2})
    other = run_config(
        apply_overrides(base, ["student.lam=0.9", "distiller.T=2"]), "kd", 0, {"gap": 0.2}
    )
    assert teacher_identity(kd) == teacher_identity(other)
    assert teacher_identity(kd) != teacher_identity(run_config(base, "kd", 0, {"gap": 0.4}))


def test_table1_reports_capacity_and_strength_of_each_modality(
    tmp_path, capsys, experiment_script, tiny_args, out_dirs
):
    table1 = experiment_script("table1").Table1
    records = table1.main(["--seeds", "2", "--datasets", "synthetic", *tiny_args, *out_dirs])
    assert len(records) == 4
    text = (tmp_path / "results" / "table1" / "table1.md").read_text()
    assert "| synthetic | 0.0012 | 0.0012 | acc |" in text
    assert "±" in text


def test_bad_command_lines_fail_clearly(tmp_path, experiment_script, tiny_args, out_dirs):
    fig3 = experiment_script("gamma_sweep").GammaSweep
    with pytest.raises(SystemExit):
        fig3.main(["--seeds", "0", *out_dirs])
    with pytest.raises(ValueError, match="key=value"):
        fig3.main(["--set", "student.epochs", *out_dirs])
    with pytest.raises(ValueError, match=r"gap must lie in \[0, 1\]"):
        fig3.main(["--gaps", "2", "--seeds", "1", *tiny_args, *out_dirs])
    assert not (tmp_path / "results" / "fig3" / "runs.jsonl").exists()  # nothing ran
