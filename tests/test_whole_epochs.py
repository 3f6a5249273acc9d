"""Whole-epoch steps: the same training as Lightning's per-step loop, and only where it is."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules.base import TensorBatchLoader, WholeEpoch, WholeEpochLoader
from models import MLP, build_model
from ntdh_bench.callbacks import DivergenceMonitor
from ntdh_bench.distillers import build_distiller
from ntdh_bench.ensemble import EnsembleModule, StackedSplit
from ntdh_bench.module import CrossModalKD, UnimodalModule
from ntdh_bench.optimizers import build_optimizer
from ntdh_bench.torch_env import NVML_CHECK_VARIABLE, skip_failing_nvml_probe
from ntdh_bench.training import DeviceConfig, make_trainer, quiet_lightning
from ntdh_bench.whole_epochs import whole_epoch_obstacle


def _kd_module(whole_epochs: bool, optimizer: str = "adam") -> CrossModalKD:
    L.seed_everything(0, verbose=False)
    teacher, student = build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)
    return CrossModalKD(
        student,
        teacher,
        build_distiller("kd", T=2.0),
        4,
        lam=0.5,
        optimizer=optimizer,
        lr=0.05 if optimizer == "sgd" else 1e-3,
        whole_epochs=whole_epochs,
    )


def _scalars(trainer: L.Trainer, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_whole_epoch_steps_train_what_the_per_step_loop_trains(tiny_synthetic, tmp_path, optimizer):
    # Red if the whole-epoch loop skipped zero_grad (gradients would pile up), dropped or
    # repeated a batch, reordered them, or left global_step (TensorBoard's x axis) behind.
    runs = {}
    for whole in (True, False):
        module = _kd_module(whole, optimizer)
        trainer = make_trainer(
            3, DeviceConfig(), tmp_path, "test", f"whole-{whole}", callbacks=[DivergenceMonitor()]
        )
        with quiet_lightning():
            trainer.fit(module, tiny_synthetic)
            metrics = trainer.test(module, tiny_synthetic, verbose=False)[0]
        assert module.whole_epoch_steps is whole
        assert trainer.global_step == 3 * 7  # 400 samples, batches of 64: 7 per epoch
        runs[whole] = (module, trainer, metrics)
    (fast, fast_trainer, fast_metrics), (slow, slow_trainer, slow_metrics) = runs[True], runs[False]
    slow_state = slow.student.state_dict()
    for name, value in fast.student.state_dict().items():
        torch.testing.assert_close(value, slow_state[name], rtol=0, atol=1e-7, msg=name)
    assert fast_metrics == pytest.approx(slow_metrics, abs=1e-6)
    assert fast_trainer.logger.log_dir != slow_trainer.logger.log_dir
    for tag in ("train/loss", "train/kd", "val/acc", "val/kl"):
        fast_points, slow_points = _scalars(fast_trainer, tag), _scalars(slow_trainer, tag)
        assert [s for s, _ in fast_points] == [s for s, _ in slow_points] == [6, 13, 20], tag
        assert [v for _, v in fast_points] == pytest.approx([v for _, v in slow_points], abs=1e-6)


def _batch_keys(module: L.LightningModule) -> list[set[str]]:
    """Record the keys of every batch ``module``'s training loss is given."""
    seen: list[set[str]] = []
    loss = module.training_loss

    def recording(batch):
        seen.append(set(batch))
        return loss(batch)

    module.training_loss = recording
    return seen


@pytest.mark.parametrize("whole", [True, False])
def test_whole_epoch_batches_leave_out_what_the_module_never_reads(tiny_synthetic, whole):
    # Red if the teacher's input were gathered each step although its outputs are cached,
    # if a key the loss reads went missing, or if the per-step loop (where any callback
    # may read any key) lost one. The trained weights' agreement is the test above.
    kd = _kd_module(whole)
    unimodal = UnimodalModule(build_model("mlp", (50,), 4), 4, modality="xb", whole_epochs=whole)
    full = {"xa", "xb", "y", "index"}
    expected = {id(kd): {"xb", "y", "index"}, id(unimodal): {"xb", "y"}}
    for module in (kd, unimodal):
        seen = _batch_keys(module)
        trainer = make_trainer(1, DeviceConfig())
        with quiet_lightning():
            trainer.fit(module, tiny_synthetic)
        assert len(seen) == 7
        assert all(keys == (expected[id(module)] if whole else full) for keys in seen)
    assert kd.keys_unread_in_training() == {"xa"}
    kd._teacher_cache = {}
    assert kd.keys_unread_in_training() == set()  # the teacher then runs on xa each step


class _EveryBatch(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pass


def test_whatever_needs_the_per_step_loop_keeps_it(tiny_synthetic, lean_trainer):
    assert whole_epoch_obstacle(lean_trainer()) is None
    blocked = {
        "between steps (on_train_batch_end)": lean_trainer(callbacks=[_EveryBatch()]),
        "gradient_clip_val": lean_trainer(gradient_clip_val=1.0),
        "accumulate_grad_batches": lean_trainer(accumulate_grad_batches=2),
        "precision bf16-mixed": lean_trainer(precision="bf16-mixed"),
        "limit_train_batches": lean_trainer(limit_train_batches=3),
        "validation inside an epoch": lean_trainer(val_check_interval=0.5),
        "max_steps": lean_trainer(max_steps=5),
    }
    for reason, trainer in blocked.items():
        assert reason in (whole_epoch_obstacle(trainer) or ""), reason
    module = _kd_module(True)
    trainer = lean_trainer(max_epochs=1, callbacks=[_EveryBatch()])
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
    assert not module.whole_epoch_steps and module.automatic_optimization
    assert trainer.global_step == 7


class _Scheduled(CrossModalKD):
    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1)]


def test_learning_rate_schedulers_are_not_silently_dropped(tiny_synthetic, lean_trainer):
    # Lightning leaves schedulers to manual optimisation: whole-epoch steps must say so.
    L.seed_everything(0, verbose=False)
    args = (build_model("mlp", (50,), 4), build_model("mlp", (50,), 4), None, 4)
    with quiet_lightning(), pytest.raises(RuntimeError, match="whole_epochs=False"):
        lean_trainer(max_epochs=1).fit(_Scheduled(*args, lam=0.0), tiny_synthetic)
    module = _Scheduled(*args, lam=0.0, whole_epochs=False)
    trainer = lean_trainer(max_epochs=2)
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2


def test_a_whole_epoch_loader_yields_its_loaders_batches_once_per_epoch():
    tensors = {"i": torch.arange(10)}
    inner = TensorBatchLoader(tensors, 4, shuffle=True, seed=3)
    loader = WholeEpochLoader(inner)
    assert len(loader) == 1 and loader.sampler is inner.sampler
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        (epoch_item,) = list(loader)
        assert isinstance(epoch_item, WholeEpoch) and len(epoch_item) == 3
        expected = [b["i"] for b in inner]
        assert all(torch.equal(a["i"], b) for a, b in zip(epoch_item, expected, strict=True))


def _ensemble(whole_epochs: bool) -> EnsembleModule:
    torch.manual_seed(0)
    x = torch.randn(3, 24, 5, generator=torch.Generator().manual_seed(2))
    y = torch.arange(24).remainder(3).expand(3, -1).contiguous()
    teacher = torch.randn(3, 24, 3, generator=torch.Generator().manual_seed(1))
    splits = {s: StackedSplit(x, y, teacher) for s in ("train", "val", "test")}
    module = EnsembleModule(
        [MLP(5, 3, hidden=(4,)) for _ in range(3)], splits, seeds=[0, 1, 2], batch_size=8,
        eval_batch_size=16, distiller=build_distiller("kd", T=2.0), lam=0.5, lr=0.01,
    )  # fmt: skip
    module.whole_epochs = whole_epochs
    return module


def test_ensembles_train_in_whole_epochs_as_in_steps():
    modules = {}
    for whole in (True, False):
        module = _ensemble(whole)
        with quiet_lightning():
            trainer = make_trainer(3, DeviceConfig(), None, limit_val_batches=0)
            trainer.fit(module)
        assert module.whole_epoch_steps is whole and trainer.global_step == 9
        modules[whole] = module
    for k in range(3):
        for name, value in modules[False].member_state(k).items():
            torch.testing.assert_close(modules[True].member_state(k)[name], value, msg=name)
    assert modules[True].history == modules[False].history


def test_optimizers_are_fused_where_torch_has_the_kernel():
    cpu = [torch.nn.Parameter(torch.zeros(3))]
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    for name in ("adam", "adamw", "sgd"):
        assert build_optimizer(cpu, name, 0.1, 0.0).defaults["fused"] is True, name
        assert not build_optimizer(meta, name, 0.1, 0.0).defaults["fused"], name
        assert not build_optimizer(cpu, name, 0.1, 0.0, fused=False).defaults["fused"], name


def test_the_nvml_probe_is_dropped_only_where_nvml_cannot_load(monkeypatch):
    monkeypatch.setenv(NVML_CHECK_VARIABLE, "1")
    assert not skip_failing_nvml_probe("libc.so.6")  # loadable: the probe stays
    assert os.environ[NVML_CHECK_VARIABLE] == "1"
    assert skip_failing_nvml_probe("libntdh-no-such-library.so")
    assert NVML_CHECK_VARIABLE not in os.environ
    monkeypatch.setenv(NVML_CHECK_VARIABLE, "0")  # the user's own setting is left alone
    assert not skip_failing_nvml_probe("libntdh-no-such-library.so")
    assert os.environ[NVML_CHECK_VARIABLE] == "0"
