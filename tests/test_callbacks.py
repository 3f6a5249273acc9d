"""The suite's Lightning callbacks on a user's own Trainer: divergences, masks, history."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from models import build_model
from ntdh_bench.callbacks import DivergenceMonitor, FeatureMask, MetricHistory, SampleMask, curve
from ntdh_bench.distillers import build_distiller
from ntdh_bench.divergence import decoupled_jsd, decoupled_kl, kl
from ntdh_bench.masking import MaskedNetwork, SampleWeighting
from ntdh_bench.module import CrossModalKD
from ntdh_bench.training import quiet_lightning


def _nets(seed: int = 0):
    L.seed_everything(seed, verbose=False)
    return build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_logged_divergences_equal_the_functions_on_teacher_and_student_outputs(
    tiny_synthetic, lean_trainer, T
):
    """Swapping teacher and student, or ignoring T, turns this red (KL and its parts are
    asymmetric, and every divergence depends on T)."""
    teacher, student = _nets()
    module = CrossModalKD(student, teacher, build_distiller("kd"), 4)
    trainer = lean_trainer(max_epochs=1, callbacks=[DivergenceMonitor(T)])
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    val = tiny_synthetic.split_tensors("val")
    with torch.no_grad():
        z_t, z_s = teacher.eval()(val["xa"]).logits, student.eval()(val["xb"]).logits
    tckl, nckl = decoupled_kl(z_t, z_s, val["y"], T)
    tcjsd, ncjsd = decoupled_jsd(z_t, z_s, val["y"], T)
    expected = {"kl": kl(z_t, z_s, T), "tckl": tckl, "nckl": nckl, "tcjsd": tcjsd, "ncjsd": ncjsd}
    for name, values in expected.items():
        assert logged[f"val/{name}"] == pytest.approx(float(values.mean()), rel=1e-5), name
    swapped = kl(z_s, z_t, T).mean()
    assert logged["val/kl"] != pytest.approx(float(swapped), rel=1e-3)
    teacher_acc = float((z_t.argmax(1) == val["y"]).float().mean())
    assert logged["val/teacher_acc"] == pytest.approx(teacher_acc)


def test_sample_mask_callback_masks_its_share_of_every_batch(tiny_synthetic, lean_trainer):
    teacher, student = _nets()
    module = CrossModalKD(student, teacher, build_distiller("kd"), 4)
    history = MetricHistory()
    trainer = lean_trainer(max_epochs=3, callbacks=[SampleMask("true", 0.25), history])
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
    assert curve(history.as_metrics(), "train/masked_fraction") == pytest.approx(
        [0.25] * 3, abs=0.01
    )
    assert len(curve(history.as_metrics(), "val/acc")) == 3
    restored = MetricHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.as_metrics() == history.as_metrics()


def test_masked_fraction_is_the_epoch_mean_over_samples(tiny_synthetic, lean_trainer):
    # Each batch masks floor(0.3 * n_b) of n_b samples; the logged epoch mean weighs batches by
    # size (sum k_b / sum n_b), as Lightning's on_epoch mean did, also for the float fractions.
    teacher, student = _nets()
    module = CrossModalKD(student, teacher, build_distiller("kd"), 4)
    history = MetricHistory()
    trainer = lean_trainer(max_epochs=1, callbacks=[SampleMask("true", 0.3), history])
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
    sizes = [len(b["y"]) for b in tiny_synthetic.train_dataloader()]
    assert len(set(sizes)) > 1  # a smaller last batch makes the two means differ
    expected = sum(math.floor(0.3 * n) for n in sizes) / sum(sizes)
    assert curve(history.as_metrics(), "train/masked_fraction") == [pytest.approx(expected)]


def test_a_sample_mask_needs_a_distiller(tiny_synthetic, lean_trainer):
    teacher, student = _nets()
    module = CrossModalKD(student, teacher, None, 4, lam=0.0)
    with quiet_lightning(), pytest.raises(ValueError, match="needs a distiller"):
        lean_trainer(max_epochs=1, callbacks=[SampleMask()]).fit(module, tiny_synthetic)


def test_sample_weighting_weighs_the_distillation_term_only(tiny_synthetic):
    teacher, student = _nets()
    tiny_synthetic.setup()
    batch = next(iter(tiny_synthetic.train_dataloader()))
    logged, losses = {}, {}
    for name, weighting in (("none", None), ("all", SampleWeighting("true", 1.0))):
        module = CrossModalKD(student, teacher, build_distiller("kd"), 4, cache_teacher=False)
        if weighting is not None:
            module.add_distill_weighting(weighting)
        module.log = lambda key, value, **kw: logged.__setitem__(key, float(value.detach()))
        losses[name] = module.training_step(batch, 0)
    ce = F.cross_entropy(student(batch["xb"]).logits, batch["y"])
    torch.testing.assert_close(losses["all"], 0.5 * ce)  # every sample dropped from KD only
    assert losses["none"] > losses["all"]
    assert logged["train/masked_fraction"] == 1.0


def test_feature_mask_callback_masks_the_teacher_of_a_users_trainer(tiny_synthetic, lean_trainer):
    teacher, student = _nets()
    keep = torch.ones(50)
    keep[:20] = 0.0  # the teacher's decisive window
    module = CrossModalKD(student, teacher, build_distiller("kd"), 4)
    trainer = lean_trainer(max_epochs=1, callbacks=[FeatureMask(keep)])
    with quiet_lightning():
        trainer.fit(module, tiny_synthetic)
        masked = trainer.test(module, tiny_synthetic, verbose=False)[0]["test/teacher_acc"]
    assert isinstance(module.teacher, MaskedNetwork) and module.teacher.net is teacher
    assert not any(p.requires_grad for p in module.teacher.parameters())
    test = tiny_synthetic.split_tensors("test")
    with torch.no_grad():
        expected = teacher(test["xa"] * keep).logits.argmax(1).eq(test["y"]).float().mean()
        unmasked = teacher(test["xa"]).logits.argmax(1).eq(test["y"]).float().mean()
    assert masked == pytest.approx(float(expected)) and masked != pytest.approx(float(unmasked))
