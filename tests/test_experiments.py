"""Experiments end to end on tiny synthetic data: Fig. 3, Table I, resume, failures, seeds."""

from __future__ import annotations

import re

import pytest

from experiments.gap_sweep import GapSweep
from experiments.table1 import Table1
from ntdh_bench.config import apply_overrides, dataset_config, run_config
from ntdh_bench.results import ResultStore
from ntdh_bench.runner import RunEnv, RunResult, execute_run
from ntdh_bench.teachers import teacher_identity


def test_gap_sweep_writes_table_figure_and_verdicts_and_resumes(
    tmp_path, capsys, tiny_args, out_dirs
):
    fig3 = GapSweep
    argv = ["--seeds", "2", "--gaps", "0", "1", *tiny_args, *out_dirs]
    records = fig3.main(argv)
    assert len(records) == 2 * 2 * 3  # seeds x gaps x (teacher, no-KD, KD)
    out = tmp_path / "results" / "fig3"
    for name in ("fig3.md", "fig3.csv", "fig3.tex", "fig3.png", "verdicts.md"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "NCJSD grows faster than TCJSD" in printed and "| 1.0 |" in printed
    assert len(list((tmp_path / "cache" / "teachers").glob("*/model.pt"))) == 4  # gap x seed
    logs = sorted(p.name for p in (tmp_path / "runs" / "fig3").iterdir())
    assert len(logs) == 8 + 1  # no-KD and KD students, and the figures; teachers: runs/teachers
    assert "figures" in logs and any(name.startswith("kd-gap1-kd-s1-") for name in logs)
    for name in logs:  # fit and test of a run in one event file
        assert len(list((tmp_path / "runs" / "fig3" / name).glob("events.out.tfevents.*"))) == 1

    lines_before = ResultStore(out).path.read_text().count("\n")
    again = fig3.main(argv)  # a rerun skips every finished run
    assert ResultStore(out).path.read_text().count("\n") == lines_before
    assert sorted(r["run_id"] for r in again) == sorted(r["run_id"] for r in records)


def test_failed_runs_are_recorded_and_retried_on_request(tmp_path, capsys, tiny_args, out_dirs):
    fig3 = GapSweep
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


def test_dry_run_lists_the_grid_without_running(tmp_path, capsys, out_dirs):
    fig3 = GapSweep
    fig3.main(["--seeds", "1", "--gaps", "0", "0.5", "--dry-run", *out_dirs])
    out = capsys.readouterr().out
    assert "6 runs: 0 done or skipped, 6 to run" in out
    assert not (tmp_path / "results" / "fig3" / "runs.jsonl").exists()


def test_same_config_and_seed_give_the_same_numbers(tmp_path, tiny_args):
    base = apply_overrides(dataset_config("synthetic"), [s for s in tiny_args if s != "--set"])
    config = run_config(base, "kd", seed=1, dataset={"gap": 0.4, "data_seed": 1})
    first = execute_run(config, RunEnv(tmp_path / "r1", tmp_path / "c1"))
    second = execute_run(config, RunEnv(tmp_path / "r2", tmp_path / "c2"))
    assert first.metrics == second.metrics
    other = execute_run({**config, "seed": 2}, RunEnv(tmp_path / "r3", tmp_path / "c3"))
    assert other.metrics != first.metrics


def _validated_epochs(record: dict) -> list[int]:
    metrics = record["metrics"]
    return sorted(int(k.rsplit("/", 1)[1]) for k in metrics if k.startswith("history/val/acc/"))


def test_sweeps_without_curves_validate_after_the_last_epoch_unless_asked(
    tmp_path, tiny_args, out_dirs
):
    argv = ["--seeds", "1", "--gaps", "0", *tiny_args, *out_dirs]  # 2 epochs a network
    records = GapSweep.main(argv)
    assert {role: _validated_epochs(r) for r in records for role in [r["config"]["role"]]} == {
        "teacher": [], "student": [1], "kd": [1]  # teachers keep no history
    }  # fmt: skip
    assert all(
        r["config"]["student"]["val_every"] == 2 for r in records if "student" in r["config"]
    )
    asked = ["--set", "student.val_every=1", "--set", "teacher.val_every=1"]
    curves = GapSweep.main([*argv, *asked])  # curves in TensorBoard
    assert [_validated_epochs(r) for r in curves if r["config"]["role"] == "kd"] == [[0, 1]]
    # how often a teacher validates does not make it another teacher: still one cached
    assert len(list((tmp_path / "cache" / "teachers").glob("*/model.pt"))) == 1


def test_teacher_identity_ignores_student_settings():
    base = dataset_config("synthetic")
    kd = run_config(base, "kd", 0, {"gap": 0.2})
    other = run_config(
        apply_overrides(base, ["student.lam=0.9", "distiller.T=2"]), "kd", 0, {"gap": 0.2}
    )
    assert teacher_identity(kd) == teacher_identity(other)
    assert teacher_identity(kd) != teacher_identity(run_config(base, "kd", 0, {"gap": 0.4}))


def test_table1_reports_capacity_and_strength_of_each_modality(
    tmp_path, capsys, tiny_args, out_dirs
):
    table1 = Table1
    records = table1.main(["--seeds", "2", "--datasets", "synthetic", *tiny_args, *out_dirs])
    assert len(records) == 4
    text = (tmp_path / "results" / "table1" / "table1.md").read_text()
    assert "| synthetic | 0.0012 | 0.0012 | acc |" in text
    assert "±" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "student.epochs"], "expects key=value"),
        (["--gaps", "2"], r"dataset: gap must lie in \[0, 1\]"),
        (["--set", "student.epoch=50"], r"student\.epoch: unknown option; did you mean 'epochs'"),
        (
            ["--set", "teacher.epochs=-1"],
            r"teacher\.epochs: Input should be greater than or equal to 1",
        ),
        (["--set", "teacher.epochs=0"], r"teacher\.epochs"),
        (["--set", "student.lam=1.5"], r"student\.lam"),
        (["--set", "student.lr=0"], r"student\.lr: Input should be greater than 0"),
        (["--set", "student.optimizer=lbfgs"], r"student\.optimizer"),
        (["--set", "distiller.T=-1"], r"distiller\.T: the temperature must be positive"),
        (["--set", "distiller.weight=-2"], r"distiller\.weight: a loss weight must be >= 0"),
        (["--set", "distiller.tau=2"], r"distiller\.tau: unknown option"),
        (["--set", "model.hiden=[4]"], r"model\.hiden: unknown option; did you mean 'hidden'"),
        (["--set", "dataset.n_sample=10"], r"dataset\.n_sample: unknown option; did you mean"),
        (["--set", "dataset.n_train=abc"], r"dataset\.n_train: Input should be a valid integer"),
    ],
)
def test_bad_command_lines_fail_before_anything_runs(tmp_path, capsys, out_dirs, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        GapSweep.main(["--seeds", "1", *argv, *out_dirs])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "results" / "fig3" / "runs.jsonl").exists()  # nothing ran
    assert not (tmp_path / "cache").exists()


def test_seeds_below_one_are_refused():
    with pytest.raises(SystemExit):
        GapSweep.main(["--seeds", "0"])


def test_set_values_are_parsed_by_type(out_dirs):
    experiment = GapSweep(GapSweep.parser().parse_args(["--set", "student.lr=1e-4", *out_dirs]))
    (kd,) = [s for s in experiment.specs()[:3] if s.role == "kd"]
    assert kd.config["student"]["lr"] == 1e-4 and isinstance(kd.config["student"]["lr"], float)
