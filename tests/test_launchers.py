"""Launchers and resume: the worker pool, submitit's local executor, kills, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.gap_sweep import GapSweep
from ntdh_bench.launchers import PoolLauncher, is_launch_rank_zero
from ntdh_bench.results import ResultStore
from ntdh_bench.status import sweep_status

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fig3():
    return GapSweep


def _metrics_by_run(root: Path) -> dict[str, dict[str, float]]:
    return {
        r["run_id"]: r["metrics"] for r in ResultStore(root / "results" / "fig3").done_records()
    }


def test_pool_workers_pinned_to_devices_match_the_serial_results(
    tmp_path, fig3, tiny_args, dirs_under
):
    argv = ["--seeds", "1", "--gaps", "0", "1", *tiny_args]
    fig3.main([*argv, *dirs_under(tmp_path / "serial")])
    pooled = fig3(fig3.parser().parse_args([*argv, *dirs_under(tmp_path / "pool")]))
    pooled.launcher = lambda: PoolLauncher(2, device_ids=["0", "1"], use_gpu=False)
    pooled.run()
    records = ResultStore(tmp_path / "pool" / "results" / "fig3").done_records()
    assert len(records) == 6
    assert {r["worker"]["cuda_visible_devices"] for r in records} <= {"0", "1"}
    assert all(r["worker"]["pid"] != os.getpid() for r in records)
    serial = _metrics_by_run(tmp_path / "serial")
    for run_id, metrics in _metrics_by_run(tmp_path / "pool").items():
        assert metrics == pytest.approx(serial[run_id], rel=1e-5), run_id


def test_cpu_worker_pool_from_the_command_line(tmp_path, fig3, tiny_args, dirs_under):
    records = fig3.main(
        ["--seeds", "1", "--gaps", "0.5", "--workers", "2", *tiny_args, *dirs_under(tmp_path)]
    )
    assert len(records) == 3 and all(r["status"] == "done" for r in records)


def test_status_counts_done_failed_and_pending(tmp_path, capsys, fig3, tiny_args, dirs_under):
    argv = ["--seeds", "1", "--gaps", "0", "1", *tiny_args, *dirs_under(tmp_path)]
    fig3.main(["--seeds", "1", "--gaps", "0", *tiny_args, *dirs_under(tmp_path)])  # half the grid
    with pytest.raises(FileNotFoundError, match="no sweep has started"):
        sweep_status(tmp_path / "results" / "nothing")
    experiment = fig3(fig3.parser().parse_args(argv))
    from ntdh_bench.status import write_grid

    write_grid(experiment.results_dir, "fig3", experiment.specs())
    # a marker left by a killed process counts as interrupted, not running
    running = experiment.results_dir / "running"
    running.mkdir(exist_ok=True)
    pending_id = next(
        s.run_id for s in experiment.specs() if s.run_id not in experiment.store.done_ids()
    )
    (running / f"{pending_id}.json").write_text(
        json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename, "started": time.time()})
    )
    status = sweep_status(experiment.results_dir)
    assert (status.total, status.done, status.failed, len(status.running)) == (6, 3, 0, 0)
    assert status.pending == 3 and status.interrupted == 1
    assert status.eta_s > 0
    fig3.main([*argv, "--status"])
    out = capsys.readouterr().out
    assert "done     3" in out and "pending  3" in out and "ETA" in out


def test_only_rank_zero_records(monkeypatch):
    assert is_launch_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_launch_rank_zero()


@pytest.mark.slow
def test_submitit_local_executor_runs_array_jobs(tmp_path, fig3, tiny_args, dirs_under):
    pytest.importorskip("submitit")
    from ntdh_bench.launchers import SlurmOptions, SubmititLauncher

    experiment = fig3(
        fig3.parser().parse_args(["--seeds", "1", "--gaps", "0", *tiny_args, *dirs_under(tmp_path)])
    )
    experiment.launcher = lambda: SubmititLauncher(
        SlurmOptions(cluster="local", gpus_per_job=0, time_min=10)
    )
    records = experiment.run()
    assert len(records) == 3
    assert (tmp_path / "results" / "fig3" / "submitit").is_dir()


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_finishes_each_run_once_with_identical_results(
    tmp_path, fig3, dirs_under
):
    grid = [
        "--seeds",
        "2",
        "--gaps",
        "0",
        "1",
        "--checkpoint-interval",
        "0",
        "--set",
        "teacher.epochs=12",
        "--set",
        "student.epochs=12",
        "--set",
        "dataset.n_samples=1500",
        "--set",
        "dataset.n_train=1000",
    ]
    fig3.main([*grid, *dirs_under(tmp_path / "clean")])
    expected = _metrics_by_run(tmp_path / "clean")

    killed = tmp_path / "killed"
    command = [
        sys.executable,
        str(ROOT / "experiments" / "gap_sweep.py"),
        *grid,
        *dirs_under(killed),
    ]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    store = ResultStore(killed / "results" / "fig3")
    while time.time() < deadline:  # kill once some runs are done and one is mid-training
        checkpoints = list((killed / "runs").glob("**/checkpoints/last.ckpt"))
        if len(store.done_ids()) >= 4 and checkpoints:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 4 <= len(store.done_ids()) < len(expected), "the kill missed the middle of the sweep"

    fig3.main([*grid, *dirs_under(killed)])
    lines = [json.loads(x) for x in store.path.read_text().splitlines() if x.strip()]
    per_run = {}
    for record in lines:
        per_run[record["run_id"]] = per_run.get(record["run_id"], 0) + 1
    assert per_run == {run_id: 1 for run_id in expected}  # each run finished exactly once
    assert any(r["timing"].get("resumed") for r in lines), "no run resumed from a checkpoint"
    assert _metrics_by_run(killed) == expected


@pytest.mark.slow
def test_ddp_sweep_on_two_cpu_processes_records_each_run_once(tmp_path, tiny_args, dirs_under):
    command = [
        sys.executable,
        str(ROOT / "experiments" / "gap_sweep.py"),
        "--seeds",
        "1",
        "--gaps",
        "0",
        "1",
        "--ddp",
        "--cpu-ddp",
        "2",
        *tiny_args,
        *dirs_under(tmp_path),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Fig. 3: cross-modal KD") == 1  # only rank 0 reports
    lines = ResultStore(tmp_path / "results" / "fig3").records()
    assert len(lines) == 6 and all(r["status"] == "done" for r in lines)
    assert len({r["run_id"] for r in lines}) == 6


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")  # a zombie has exited


def test_terminating_a_pooled_sweep_stops_its_workers(tmp_path, dirs_under):
    # Red if SIGTERM killed the sweep but left its pool workers training on as orphans.
    argv = [
        sys.executable, "experiments/gap_sweep.py", "--seeds", "2", "--gaps", "0", "1",
        "--workers", "2", "--no-ensemble", "--set", "teacher.epochs=200", *dirs_under(tmp_path),
    ]  # fmt: skip
    sweep = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running = tmp_path / "results" / "fig3" / "running"
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline and sweep.poll() is None:
        for marker in running.glob("*.json") if running.exists() else []:
            try:
                workers.add(json.loads(marker.read_text())["pid"])
            except (OSError, ValueError, KeyError):
                continue
        time.sleep(0.2)
    assert len(workers) == 2, "the workers did not start"
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=60) != 0
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)
