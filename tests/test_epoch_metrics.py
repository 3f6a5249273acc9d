"""Epoch values logged directly give TensorBoard and the callbacks what ``self.log`` gave."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ntdh_bench.epoch_metrics as epoch_metrics
import ntdh_bench.module as module_file
from models import build_model
from ntdh_bench.callbacks import DivergenceMonitor, MetricHistory
from ntdh_bench.distillers import build_distiller
from ntdh_bench.module import CrossModalKD
from ntdh_bench.training import DeviceConfig, make_trainer, quiet_lightning


def _fit(datamodule, tmp_path, version: str) -> tuple[dict, dict, dict]:
    L.seed_everything(0, verbose=False)
    teacher, student = build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)
    module = CrossModalKD(student, teacher, build_distiller("decoupled", beta=2.0), 4)
    history = MetricHistory()
    trainer = make_trainer(
        4, DeviceConfig(), tmp_path, "t", version, val_every=2,
        callbacks=[DivergenceMonitor(), history],
    )  # fmt: skip
    with quiet_lightning():
        trainer.fit(module, datamodule)
        tested = trainer.test(module, datamodule, verbose=False)[0]
    trainer.logger.close()
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    scalars = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
    return scalars, history.as_metrics(), tested


def test_direct_epoch_logs_equal_lightnings_own(tiny_synthetic, tmp_path, monkeypatch):
    # Red if the direct path wrote a value at another step (TensorBoard's x axis), dropped the
    # epoch entry or wrote it per caller, skipped a value, or hid values from the callbacks.
    direct = _fit(tiny_synthetic, tmp_path, "direct")
    monkeypatch.setattr(epoch_metrics, "direct_logging", lambda trainer: False)
    monkeypatch.setattr(module_file, "direct_logging", lambda trainer: False)
    lightning = _fit(tiny_synthetic, tmp_path, "lightning")
    scalars, history, tested = direct
    assert set(scalars) == set(lightning[0])
    for tag, points in lightning[0].items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in points], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in points]), tag
    assert {"val/ncjsd", "val/acc", "train/loss", "epoch"} <= set(scalars)
    assert history == pytest.approx(lightning[1]) and "history/val/ncjsd/0003" in history
    assert tested == pytest.approx(lightning[2])


def test_epoch_means_weigh_each_batch_by_its_size(monkeypatch):
    # Red if a batch's size were ignored (the plain mean is 3.0, not 3.75), a value counted
    # twice, a plain number lost, or folding the kept values changed the sum.
    def fill() -> dict[str, float]:
        means = epoch_metrics.EpochMeans()
        for value, n in ((1.0, 1), (3.0, 3), (5.0, 4)):
            means.add("loss", torch.tensor(value), n)
            means.add("kd", torch.tensor(-2 * value), n)
            means.add("fraction", value / 10, n)
        return {k: float(v) for k, v in means.means().items()}

    mean = (1 * 1 + 3 * 3 + 5 * 4) / 8
    expected = {"loss": mean, "kd": -2 * mean, "fraction": mean / 10}
    assert fill() == pytest.approx(expected)
    monkeypatch.setattr(epoch_metrics.EpochMeans, "FOLD_AT", 2)
    assert fill() == pytest.approx(expected)
    one = epoch_metrics.EpochMeans()
    one.add("loss", torch.tensor(7.0), 5)
    assert float(one.means()["loss"]) == 7.0  # a full-batch epoch: its value


def test_a_run_loggers_events_hold_what_one_scalar_per_call_would(tmp_path):
    # Red if values logged together lost a tag, took another's value or step, or if a
    # non-scalar value (a dict, for add_scalars) were not passed on as before.
    from lightning.pytorch.loggers import TensorBoardLogger

    from ntdh_bench.training import RunLogger

    def written(logger_class) -> dict[str, list[tuple[int, float]]]:
        logger = logger_class(save_dir=str(tmp_path), name=logger_class.__name__, version="v")
        for step in range(3):
            values = {"train/ce": torch.tensor(0.5 + step), "train/kd": step / 4, "epoch": step}
            logger.log_metrics(values, step=step)
        logger.log_metrics({"val/acc": 0.75, "pair": {"a": 1.0, "b": 2.0}}, step=9)
        logger.finalize("success")
        events = EventAccumulator(logger.log_dir)
        events.Reload()
        return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}

    ours, stock = written(RunLogger), written(TensorBoardLogger)
    assert ours == stock
    assert ours["train/kd"] == [(0, 0.0), (1, 0.25), (2, 0.5)]
    assert ours["val/acc"] == [(9, 0.75)]
