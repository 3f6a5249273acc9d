"""CrossModalKD and UnimodalModule: the frozen teacher, the loss, metrics and divergence logs."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from models import build_model
from ntdh_bench.callbacks import DIVERGENCES, DivergenceMonitor
from ntdh_bench.distillers import build_distiller
from ntdh_bench.module import CrossModalKD, UnimodalModule
from ntdh_bench.training import quiet_lightning


def _nets(seed: int = 0):
    L.seed_everything(seed, verbose=False)
    return build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)


@pytest.mark.parametrize("cache_teacher", [True, False])
def test_teacher_weights_are_bit_identical_after_training_and_it_stays_in_eval(
    tiny_synthetic, lean_trainer, cache_teacher
):
    teacher, student = _nets()
    teacher.train()  # the module must put it in eval itself
    before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    module = CrossModalKD(
        student, teacher, build_distiller("kd"), 4, lam=0.9, cache_teacher=cache_teacher
    )
    modes = []

    class RecordTeacherMode(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(pl_module.teacher.training)

    with quiet_lightning():
        lean_trainer(max_epochs=2, callbacks=[RecordTeacherMode()]).fit(module, tiny_synthetic)
    assert modes and not any(modes)
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    changed = any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
    assert changed, "the student did not train"


def test_optimizer_holds_student_and_distiller_parameters_only():
    teacher, student = _nets()
    module = CrossModalKD(student, teacher, build_distiller("kd"), 4)
    optimised = {
        id(p) for group in module.configure_optimizers().param_groups for p in group["params"]
    }
    assert optimised == {id(p) for p in student.parameters()}
    assert not optimised & {id(p) for p in teacher.parameters()}


def test_loss_is_convex_combination_of_ce_and_distillation(tiny_synthetic):
    teacher, student = _nets()
    tiny_synthetic.setup()
    batch = next(iter(tiny_synthetic.train_dataloader()))
    module = CrossModalKD(
        student, teacher, build_distiller("kd", T=2.0), 4, lam=0.3, cache_teacher=False
    )
    module.log = lambda *a, **k: None  # outside a Trainer
    loss = module.training_step(batch, 0)
    logits_s, logits_t = student(batch["xb"]).logits, teacher(batch["xa"]).logits
    ce = torch.nn.functional.cross_entropy(logits_s, batch["y"])
    kd = (
        torch.nn.functional.kl_div(
            torch.log_softmax(logits_s / 2, 1),
            torch.log_softmax(logits_t / 2, 1),
            log_target=True,
            reduction="batchmean",
        )
        * 4
    )
    torch.testing.assert_close(loss, 0.7 * ce + 0.3 * kd)


def test_divergences_and_accuracy_reach_tensorboard_every_validation_epoch(
    tiny_synthetic, lean_trainer, tmp_path
):
    teacher, student = _nets()
    module = CrossModalKD(student, teacher, build_distiller("decoupled", beta=2.0), 4)
    trainer = lean_trainer(max_epochs=3, log=True, callbacks=[DivergenceMonitor()])
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in (*DIVERGENCES, "acc", "teacher_acc"):
        assert f"val/{name}" in tags, name
        assert len(events.Scalars(f"val/{name}")) == 3  # one point per epoch
    assert {"train/tckl", "train/nckl", "train/ce", "train/loss"} <= tags


def test_no_kd_baseline_trains_on_cross_entropy_and_still_measures_divergence(
    tiny_synthetic, lean_trainer
):
    teacher, student = _nets()
    module = CrossModalKD(student, teacher, None, 4, lam=0.0)
    trainer = lean_trainer(max_epochs=2, callbacks=[DivergenceMonitor()])
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
        metrics = trainer.test(module, tiny_synthetic, verbose=False)[0]
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["test/ncjsd"] > 0 and metrics["test/tcjsd"] > 0


def test_cached_and_recomputed_teacher_outputs_give_the_same_metrics(tiny_synthetic, lean_trainer):
    results = []
    for cache in (True, False):
        teacher, student = _nets(seed=3)
        module = CrossModalKD(student, teacher, build_distiller("kd"), 4, cache_teacher=cache)
        L.seed_everything(3, verbose=False)
        trainer = lean_trainer(max_epochs=2)
        with quiet_lightning():
            trainer.fit(module, tiny_synthetic)
            results.append(trainer.test(module, tiny_synthetic, verbose=False)[0])
    for key in results[0]:
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-5), key


@pytest.mark.parametrize("cache", [True, False])
def test_the_teachers_score_is_its_accuracy_every_epoch_and_computed_once_when_cached(
    tiny_synthetic, lean_trainer, cache
):
    # Red if the reused score were another split's or stale after the cache is refilled, or
    # if a cached teacher were still scored every epoch (its outputs do not change).
    teacher, student = _nets(seed=1)
    module = CrossModalKD(student, teacher, build_distiller("kd"), 4, cache_teacher=cache)
    updates = []
    metric = module.teacher_metrics["val"]
    update = metric.update
    metric.update = lambda *args: updates.append(1) or update(*args)
    seen = []
    history = type("History", (L.Callback,), {})()
    history.on_validation_end = lambda trainer, _: seen.append(
        float(trainer.callback_metrics["val/teacher_acc"])
    )
    trainer = lean_trainer(max_epochs=3, callbacks=[history])
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
        tested = trainer.test(module, tiny_synthetic, verbose=False)[0]
    val, test = tiny_synthetic.split_tensors("val"), tiny_synthetic.split_tensors("test")
    with torch.no_grad():
        expected_val = (teacher(val["xa"]).logits.argmax(1) == val["y"]).float().mean()
        expected_test = (teacher(test["xa"]).logits.argmax(1) == test["y"]).float().mean()
    assert seen == pytest.approx([float(expected_val)] * 3)
    assert tested["test/teacher_acc"] == pytest.approx(float(expected_test))
    assert len(updates) == (1 if cache else 3)


def test_unimodal_module_learns_the_teacher_modality(tiny_synthetic, lean_trainer):
    L.seed_everything(0, verbose=False)
    module = UnimodalModule(build_model("mlp", (50,), 4), 4, modality="xa", lr=1e-2)
    trainer = lean_trainer(max_epochs=5)
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
        acc = trainer.test(module, tiny_synthetic, verbose=False)[0]["test/acc"]
    assert acc > 0.4  # chance is 0.25
    assert module.whole_epoch_steps and trainer.global_step == 35  # 7 batches an epoch


def test_invalid_module_arguments_raise():
    teacher, student = _nets()
    with pytest.raises(ValueError, match="needs a teacher"):
        CrossModalKD(student, None, build_distiller("kd"), 4)
    with pytest.raises(ValueError, match="lam"):
        CrossModalKD(student, teacher, build_distiller("kd"), 4, lam=1.5)
    with pytest.raises(ValueError, match="optimizer"):
        CrossModalKD(student, teacher, None, 4, optimizer="lbfgs")
    with pytest.raises(ValueError, match="modality"):
        UnimodalModule(student, 4, modality="xc")


@pytest.mark.parametrize(("ce_weight", "lam"), [(1.0, 1.0), (0.0, 1.0)])
def test_released_loss_forms_weigh_ce_and_distillation_separately(tiny_synthetic, ce_weight, lam):
    """CE + KL (released synthetic) and the distillation term alone (released RAVDESS)."""
    teacher, student = _nets()
    tiny_synthetic.setup()
    batch = next(iter(tiny_synthetic.train_dataloader()))
    module = CrossModalKD(
        student, teacher, build_distiller("kd", T=1.0), 4, lam=lam, ce_weight=ce_weight,
        cache_teacher=False,
    )  # fmt: skip
    module.log = lambda *a, **k: None
    loss = module.training_step(batch, 0)
    logits_s, logits_t = student(batch["xb"]).logits, teacher(batch["xa"]).logits
    ce = torch.nn.functional.cross_entropy(logits_s, batch["y"])
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(logits_s, 1), torch.log_softmax(logits_t, 1), log_target=True,
        reduction="batchmean",
    )  # fmt: skip
    torch.testing.assert_close(loss, ce_weight * ce + lam * kl)


class _StepLosses(L.Callback):
    """The loss and batch size of every training step, per epoch."""

    def __init__(self) -> None:
        self.steps: dict[int, list[tuple[float, int]]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = (float(outputs["loss"]), len(batch["y"]))
        self.steps.setdefault(trainer.current_epoch, []).append(step)


def test_training_losses_reach_tensorboard_as_batch_weighted_epoch_means(
    tiny_synthetic, lean_trainer
):
    # Red if the per-epoch accumulation of the training losses (logged once per epoch instead
    # of per step) weighs batches equally (400 samples: six batches of 64 and one of 16), logs
    # only the last batch, or carries sums over from the previous epoch.
    teacher, student = _nets()
    module = CrossModalKD(student, teacher, build_distiller("kd"), 4)
    losses = _StepLosses()
    trainer = lean_trainer(max_epochs=2, log=True, callbacks=[losses])
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    logged = [e.value for e in events.Scalars("train/loss")]
    expected = [
        sum(v * n for v, n in losses.steps[e]) / sum(n for _, n in losses.steps[e]) for e in (0, 1)
    ]
    assert [n for _, n in losses.steps[0]] == [64] * 6 + [16]
    assert logged == pytest.approx(expected, rel=1e-6)


def test_cached_teacher_rows_equal_index_select_of_every_output():
    # Red if the lazily gathered rows of the teacher cache differ from ModelOutput.index_select
    # (wrong index, an embedding taken from the wrong feature map, a stale row cache).
    from models.base import ModelOutput
    from ntdh_bench.teacher_rows import CachedRows

    torch.manual_seed(0)
    features = [torch.randn(10, 5), torch.randn(10, 3)]
    index = torch.tensor([7, 0, 3, 3])
    for embedding, is_last in ((features[-1], True), (torch.randn(10, 3), False), (None, False)):
        cached = ModelOutput(torch.randn(10, 4), features, embedding)
        rows, expected = CachedRows(cached, index, is_last), cached.index_select(index)
        assert torch.equal(rows.logits, expected.logits)
        assert all(torch.equal(a, b) for a, b in zip(rows.features, expected.features, strict=True))
        if embedding is None:
            assert rows.embedding is None
        else:
            assert torch.equal(rows.embedding, expected.embedding)
