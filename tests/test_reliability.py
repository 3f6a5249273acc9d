"""Reliability: a run is done only when it trained and its numbers are finite; sweeps sharing a
store train each run once; resumed runs compute what uninterrupted ones do; data problems are
counted (or, under --strict, fatal); --cache-dir reaches every cache."""

from __future__ import annotations

import math
import os
import random
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from datamodules import RavdessDataModule, SyntheticDataModule
from datamodules.base import (
    DataError,
    DataWarning,
    data_environment,
    data_warning_counts,
    report_data_problem,
    reset_data_warnings,
)
from models import build_model
from ntdh_bench.checkpointing import CHECKPOINT_NAME, EpochCheckpoint
from ntdh_bench.config import apply_overrides, resolve_run_config
from ntdh_bench.distillers import build_distiller
from ntdh_bench.guards import DivergedError, DivergenceGuard, IncompleteRunError
from ntdh_bench.launchers import SerialLauncher, Sweep, run_lock, run_one
from ntdh_bench.module import CrossModalKD
from ntdh_bench.results import ResultStore
from ntdh_bench.runner import RunEnv, RunResult, execute_run
from ntdh_bench.training import DeviceConfig, make_trainer, quiet_lightning, train_unimodal
from ntdh_core import paths

sys.path.insert(0, str(Path(__file__).resolve().parent / "datamodules"))
import ravdess_fixtures as rfx

TRAIN = {"lr": 1e-2, "weight_decay": 0.0, "optimizer": "adam", "momentum": 0.9, "val_every": 1}


# --- a run is done only if it trained and its metrics are finite -------------------------------
class RisingLoss(L.LightningModule):
    """A module whose logged training loss grows tenfold per epoch (a diverging run)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        loss = (self.w - 1.0).square().sum() + 10.0**self.current_epoch
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=2)


def test_a_loss_above_factor_times_its_first_epoch_value_stops_the_run_naming_epoch_and_step():
    # red if the guard is not registered, or compares against the wrong baseline
    trainer = make_trainer(5, DeviceConfig())
    with quiet_lightning(), pytest.raises(DivergedError) as info:
        trainer.fit(RisingLoss())
    message = str(info.value)
    assert "train/loss" in message and "epoch 2 (step 6)" in message and "10 x" in message
    assert "NTDH_DIVERGENCE_FACTOR" in message


def test_the_divergence_factor_is_a_setting_and_survives_a_resume(monkeypatch):
    monkeypatch.setenv("NTDH_DIVERGENCE_FACTOR", "1000")
    assert DivergenceGuard().factor == 1000.0
    trainer = make_trainer(3, DeviceConfig())
    with quiet_lightning():
        trainer.fit(RisingLoss())  # 100x after 2 epochs: within a factor of 1000
    guard = DivergenceGuard(factor=5.0)
    guard.load_state_dict({"first": {"train/loss": 2.0}})  # as restored from a checkpoint
    assert guard.state_dict() == {"first": {"train/loss": 2.0}}


class StopEarly(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True  # as an early-stopping callback would


def test_a_fit_that_ends_before_its_epochs_is_not_done():
    # red if a run stopped after 1 of 3 epochs were recorded as done
    with quiet_lightning(), pytest.raises(IncompleteRunError, match="after 1 of 3 epoch"):
        make_trainer(3, DeviceConfig(), callbacks=[StopEarly()]).fit(RisingLoss())


def _sweep(tmp_path: Path, executor) -> Sweep:
    return Sweep("adhoc", tmp_path / "results", RunEnv(runs_dir=tmp_path / "runs"), executor)


def test_a_diverged_run_is_recorded_as_failed_with_the_epoch_and_the_values(tmp_path):
    def diverging(config, env, run_id):
        with quiet_lightning():
            make_trainer(5, DeviceConfig()).fit(RisingLoss())
        return RunResult({"test/acc": 0.9}, {})

    record = run_one(_sweep(tmp_path, diverging), {"seed": 0}, "r1")
    assert record["status"] == "failed" and "DivergedError" in record["error"]
    assert "epoch 2" in record["error"] and "first-epoch value" in record["error"]
    assert ResultStore(tmp_path / "results").latest()["r1"]["status"] == "failed"


@pytest.mark.parametrize("metrics", [{"test/acc": math.nan}, {"test/acc": math.inf}, {}])
def test_nan_or_missing_metrics_make_a_failed_run_not_a_done_one(tmp_path, metrics):
    # red if a NaN cell is recorded as done (and then averaged into a table or a verdict)
    record = run_one(_sweep(tmp_path, lambda c, e, r: RunResult(dict(metrics), {})), {}, "r1")
    assert record["status"] == "failed"
    assert ("test/acc" in record["error"]) if metrics else ("no metrics" in record["error"])
    assert ResultStore(tmp_path / "results").done_ids() == set()


# --- two sweeps on one store ---------------------------------------------------------------------
def test_two_sweeps_on_one_store_train_each_run_once(tmp_path):
    # red without the per-run lock (both threads run every run) or without the store re-read
    calls: list[str] = []
    guard = threading.Lock()

    def slow(config, env, run_id):
        with guard:
            calls.append(run_id)
        time.sleep(0.15)
        return RunResult({"test/acc": 0.5}, {})

    runs = [({"seed": i}, f"run{i}") for i in range(6)]
    sweeps = [_sweep(tmp_path, slow), _sweep(tmp_path, slow)]
    threads = [
        threading.Thread(target=SerialLauncher().launch, args=(s, runs, lambda r: None))
        for s in sweeps
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == sorted(r for _, r in runs)  # each run trained exactly once
    store = ResultStore(tmp_path / "results")
    assert len(store.records()) == 6 and store.done_ids() == {r for _, r in runs}
    assert not list((tmp_path / "results" / "running").glob("*.lock"))


def test_a_locked_run_is_skipped_and_a_done_one_is_not_run_again(tmp_path):
    sweep = _sweep(tmp_path, lambda c, e, r: RunResult({"test/acc": 0.5}, {}))
    with run_lock(sweep.running_dir, "r1") as held:
        assert held
        assert run_one(sweep, {}, "r1")["status"] == "skipped"
    assert run_one(sweep, {}, "r1")["status"] == "done"
    later = replace(sweep, executor=lambda c, e, r: pytest.fail("ran a done run"))
    assert run_one(later, {}, "r1")["status"] == "skipped"
    assert len(ResultStore(tmp_path / "results").records()) == 1


# --- resume: stop after an epoch, resume, identical metrics --------------------------------------
class StopAt(L.Callback):
    """Kill the fit at the start of epoch ``epoch`` (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


def _unimodal(tmp_path: Path, version: str, callbacks=()):
    L.seed_everything(0, verbose=False)
    dm = SyntheticDataModule(gap=0.5, n_samples=600, n_train=400, batch_size=64)
    network = build_model("mlp", (50,), 4)
    env = RunEnv(runs_dir=tmp_path / "runs", checkpoint_interval_s=0.0)
    with quiet_lightning():
        _, metrics, timing, _ = train_unimodal(
            network, dm, "xa", {**TRAIN, "epochs": 3}, env, "resume", version, callbacks
        )
    return metrics, timing


def test_a_run_stopped_after_an_epoch_resumes_to_the_uninterrupted_metrics(tmp_path):
    # red if the checkpoint misses the optimizer, the batch order or the RNG state
    clean, _ = _unimodal(tmp_path, "clean")
    with pytest.raises(RuntimeError, match="killed"):
        _unimodal(tmp_path, "killed", callbacks=[StopAt(2)])
    checkpoint = tmp_path / "runs" / "resume" / "killed" / "checkpoints" / CHECKPOINT_NAME
    assert checkpoint.exists()
    resumed, timing = _unimodal(tmp_path, "killed")
    assert timing.get("resumed") == 1.0 and not checkpoint.exists()
    assert resumed == pytest.approx(clean, rel=1e-6, abs=1e-7)


def test_a_corrupt_last_checkpoint_is_discarded_with_a_warning_and_the_run_starts_over(
    tmp_path, caplog
):
    clean, _ = _unimodal(tmp_path, "clean")
    checkpoint = tmp_path / "runs" / "resume" / "torn" / "checkpoints" / CHECKPOINT_NAME
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"PK\x03\x04 a torn checkpoint")
    again, timing = _unimodal(tmp_path, "torn")
    assert "resumed" not in timing and again == pytest.approx(clean, rel=1e-6, abs=1e-7)
    assert any(str(checkpoint) in r.getMessage() for r in caplog.records)


def test_the_checkpoint_restores_python_numpy_and_torch_random_states():
    callback, checkpoint = EpochCheckpoint("unused"), {}
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    callback.on_save_checkpoint(None, None, checkpoint)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    callback.on_load_checkpoint(None, None, checkpoint)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# --- the no-KD baseline and distiller weights ----------------------------------------------------
def test_the_no_kd_baseline_trains_well_above_chance():
    # red if the student's data, labels or loss are wired wrongly (it would sit at 0.25)
    L.seed_everything(0, verbose=False)
    dm = SyntheticDataModule(gap=0.0, n_samples=1500, n_train=1000, batch_size=64)
    teacher, student = build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)
    module = CrossModalKD(student, teacher, None, 4, lam=0.0, lr=1e-2)
    trainer = make_trainer(8, DeviceConfig())
    with quiet_lightning():
        trainer.fit(module, dm)
        acc = trainer.test(module, dm, verbose=False)[0]["test/acc"]
    assert acc > 0.5, acc  # chance is 0.25


WEIGHTS = {
    "kd": ["weight"],
    "sp": ["weight"],
    "pkt": ["weight"],
    "dkd": ["alpha", "beta"],
    "decoupled": ["alpha", "beta"],
    "rkd": ["distance_weight", "angle_weight"],
}


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_overriding_a_distillers_weights_scales_its_loss(name, tiny_synthetic):
    # red if a --set weight is parsed but never reaches the loss
    tiny_synthetic.setup()
    batch = next(iter(tiny_synthetic.train_dataloader()))
    terms = []
    for k in (1.0, 3.0):
        raw = {"role": "kd", "seed": 0, "dataset": {"name": "synthetic"}, "model": {"name": "mlp"}}
        raw.update(teacher={}, student={})
        raw["distiller"] = {"name": name, **({"warmup": 0} if name == "dkd" else {})}
        defaults = build_distiller(name).defaults()
        sets = [f"distiller.{w}={k * defaults[w]}" for w in WEIGHTS[name]]
        config = resolve_run_config(apply_overrides(raw, sets))
        options = {o: v for o, v in config["distiller"].items() if o != "name"}
        L.seed_everything(0, verbose=False)
        teacher, student = build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)
        distiller = build_distiller(name, task="classification", **options)
        module = CrossModalKD(student, teacher, distiller, 4, lam=0.5, cache_teacher=False)
        logged = {}
        module.log = lambda key, value, logged=logged, **kw: logged.__setitem__(key, float(value))
        loss = float(module.training_step(batch, 0))
        terms.append(loss - 0.5 * logged["train/ce"])
    assert terms[0] > 0 and terms[1] == pytest.approx(3 * terms[0], rel=1e-4)


# --- data problems: warned and counted, or fatal under --strict -----------------------------------
def test_data_problems_are_warned_counted_and_fatal_when_strict(monkeypatch):
    reset_data_warnings()
    monkeypatch.setenv("NTDH_STRICT", "0")
    with pytest.warns(DataWarning, match=r"clip\.wav"):
        report_data_problem("short_reads", "1 clip zero-padded: clip.wav", 1)
    report_data_problem("short_reads", "2 more", 2)
    assert data_warning_counts() == {"short_reads": 3}
    monkeypatch.setenv("NTDH_STRICT", "1")
    with pytest.raises(DataError, match=r"clip\.wav.*--strict"):
        report_data_problem("short_reads", "1 clip zero-padded: clip.wav", 1)


def test_a_ravdess_runs_record_counts_its_unpaired_clips(tmp_path, monkeypatch):
    # red if the count stays in the log and never reaches the run's record
    root = tmp_path / "data"
    rfx.write_ravdess(root / "ravdess", actors=(1, 5, 9), utterances=((1, 1, 1, 1), (2, 1, 1, 1)))
    for video in (root / "ravdess" / "Actor_09").glob("0[12]-01-02-*.mp4"):
        video.unlink()
    monkeypatch.setenv("NTDH_STRICT", "0")
    dataset = {
        "name": "ravdess",
        "root": str(root),
        "actor_split": {"train": [9], "val": [5], "test": [1]},
        "audio": {"n_mels": 32, "offset": 0.0, "duration": 0.5},
        "video": {"n_frames": 2, "size": 16},
        "batch_size": 2,
    }
    config = {
        "role": "teacher",
        "seed": 0,
        "dataset": dataset,
        "model": {"name": "cnn2d"},
        "teacher": {"epochs": 1},
    }
    env = RunEnv(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    with data_environment(tmp_path / "cache", strict=False):
        metrics = execute_run(config, env).metrics
    assert metrics["data/unpaired_clips"] == 1.0
    assert list((tmp_path / "cache" / "ravdess").glob("audio-logmel-*.npz"))  # --cache-dir
    fresh = RunEnv(runs_dir=tmp_path / "runs2", cache_dir=tmp_path / "cache2")  # no teacher yet
    with data_environment(tmp_path / "cache2", strict=True), pytest.raises(DataError):
        execute_run(config, fresh)


def test_cache_dir_reaches_every_default_cache_and_strict_every_run(tmp_path, monkeypatch):
    from experiments.gap_sweep import GapSweep

    monkeypatch.setenv("NTDH_CACHE", str(tmp_path / "elsewhere"))
    rfx.write_ravdess(tmp_path / "data" / "ravdess", actors=(1,), utterances=((1, 1, 1, 1),))
    seen = {}

    def spy(config, env, run_id):
        seen["cache_root"] = paths.cache_root()
        seen["ravdess"] = RavdessDataModule(root=str(tmp_path / "data")).cache_dir
        seen["strict"] = os.environ.get("NTDH_STRICT")
        return RunResult({"test/acc": 0.5}, {})

    args = ["--seeds", "1", "--gaps", "0", "--strict", "--cache-dir", str(tmp_path / "c")]
    args += ["--results-dir", str(tmp_path / "r"), "--runs-dir", str(tmp_path / "t")]
    GapSweep(GapSweep.parser().parse_args(args)).run(executor=spy)
    assert seen == {
        "cache_root": tmp_path / "c",
        "ravdess": tmp_path / "c" / "ravdess",
        "strict": "1",
    }
    assert os.environ["NTDH_CACHE"] == str(tmp_path / "elsewhere")  # restored afterwards


# --- DDP: only rank 0 records -----------------------------------------------------------------
DDP_SCRIPT = """
import os, sys
from pathlib import Path
import lightning as L, torch
from ntdh_bench.launchers import Sweep, run_one
from ntdh_bench.runner import RunEnv, RunResult
from ntdh_bench.training import DeviceConfig, make_trainer, quiet_lightning

class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
    def training_step(self, batch, i):
        loss = (self.w * batch).square().mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(8, 1), batch_size=2)

def executor(config, env, run_id):
    trainer = make_trainer(1, env.devices)
    with quiet_lightning():
        trainer.fit(Tiny())
    Path(sys.argv[1], f"rank{trainer.global_rank}").write_text("ran")
    return RunResult({"train/loss": float(trainer.callback_metrics["train/loss"])}, {})

out = Path(sys.argv[1])
env = RunEnv(runs_dir=out / "runs", devices=DeviceConfig(cpu_processes=2, strategy="ddp"))
run_one(Sweep("ddp", out / "results", env, executor), {"seed": 0}, "r1")
"""


def test_under_two_process_cpu_ddp_only_rank_zero_records(tmp_path):
    # red if a helper rank appends its own record (two lines per run) or takes the run's lock
    import subprocess

    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    root = Path(__file__).resolve().parent.parent
    environment = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "rank0").exists() and (tmp_path / "rank1").exists()  # both trained
    records = ResultStore(tmp_path / "results").records()
    assert [(r["run_id"], r["status"]) for r in records] == [("r1", "done")]
