"""Epoch values logged directly give TensorBoard and the callbacks what ``self.log`` gave."""

from __future__ import annotations

import lightning as L
import pytest
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
