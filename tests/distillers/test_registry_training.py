"""Every registered distiller trains through CrossModalKD on the synthetic data."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from datamodules import SyntheticDataModule
from models import MLP
from ntdh_bench.distillers import DISTILLERS, build_distiller
from ntdh_bench.module import CrossModalKD
from ntdh_bench.training import quiet_lightning


class _RecordLosses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(distiller, max_epochs=1, limit_train_batches=3, cache_teacher=False):
    L.seed_everything(0, verbose=False)
    dm = SyntheticDataModule(n_samples=600, n_train=400, batch_size=64, gap=0.2)
    teacher, student = MLP(50, 4), MLP(50, 4)
    module = CrossModalKD(student, teacher, distiller, num_classes=4, cache_teacher=cache_teacher)
    record = _RecordLosses()
    trainer = L.Trainer(
        max_epochs=max_epochs,
        limit_train_batches=limit_train_batches,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with quiet_lightning():
        trainer.fit(module, datamodule=dm)
    return trainer, module, dm, record.losses, teacher_before


@pytest.mark.parametrize("name", sorted(DISTILLERS))
def test_every_distiller_trains_the_student_and_its_adapters_not_the_teacher(name):
    trainer, module, _, losses, teacher_before = _fit(build_distiller(name))
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    for param in module.distiller.parameters():
        assert id(param) in optimised
        assert param.grad is not None and torch.isfinite(param.grad).all()
    for param in module.student.parameters():
        assert param.grad is not None
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key])
    assert all(p.grad is None for p in module.teacher.parameters())
    assert not any(id(p) in optimised for p in module.teacher.parameters())


@pytest.mark.parametrize("name", ["fitnet", "crd"])
def test_adapters_are_checkpointed_and_restored_into_a_fresh_module(name, tmp_path):
    trainer, module, dm, _, _ = _fit(build_distiller(name), cache_teacher=True)
    adapters = dict(module.distiller.named_parameters())
    assert adapters
    if name == "crd":  # the memory bank spans the training split
        assert module.distiller.memory_s.shape == (400, 128)
    with quiet_lightning():
        trainer.test(module, datamodule=dm, verbose=False)
    assert all(p is adapters[k] for k, p in module.distiller.named_parameters())  # not rebound
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    fresh = CrossModalKD(MLP(50, 4), module.teacher, build_distiller(name), num_classes=4)
    tester = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with quiet_lightning():
        tester.test(fresh, datamodule=dm, ckpt_path=tmp_path / "run.ckpt", verbose=False)
    saved = module.distiller.state_dict()
    restored = fresh.distiller.state_dict()
    assert set(saved) == set(restored)
    assert all(torch.equal(saved[k], restored[k]) for k in saved)


def test_the_module_tells_the_distiller_the_epoch():
    _, module, _, _, _ = _fit(build_distiller("dkd"), max_epochs=2, limit_train_batches=1)
    assert module.distiller.epoch == 1
    assert module.distiller.warmup_factor() == pytest.approx(2 / 20)


@pytest.mark.parametrize("name", sorted(DISTILLERS))
def test_every_weight_can_be_overridden(name):
    defaults = DISTILLERS[name].defaults()
    for key, value in defaults.items():
        if "weight" in key or key in ("alpha", "beta"):
            assert getattr(build_distiller(name, **{key: 0.25}), key) == 0.25, (key, value)
