"""Masks of the paper: Algorithm 1 (feature saliency), Algorithm 2 (sample mask), pssm."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import build_model
from models.base import ModelOutput
from ntdh_bench.callbacks import MetricHistory, curve
from ntdh_bench.distillers import build_distiller
from ntdh_bench.divergence import decoupled_jsd
from ntdh_bench.experiment import apply_overrides, load_config, run_config
from ntdh_bench.masking import (
    MaskedNetwork,
    NontargetReference,
    Saliency,
    SampleMask,
    feature_keep_mask,
    joint_train,
    load_or_compute_saliency,
    mask_count,
    patch_groups,
    permutation_saliency,
    permutation_saliency_loop,
    pssm_weights,
    resolve_masks,
    select_masked,
)
from ntdh_bench.module import CrossModalKD
from ntdh_bench.results import config_hash
from ntdh_bench.runner import RunEnv, execute_run, teacher_identity
from ntdh_bench.training import quiet_lightning

TINY = [
    "teacher.epochs=2",
    "student.epochs=2",
    "dataset.n_samples=600",
    "dataset.n_train=400",
]


# --- how many are masked ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("ratio", "n", "expected"),
    [(0.25, 50, 12), (0.5, 50, 25), (0.29, 100, 29), (0.1, 5, 0), (0.9, 10, 9), (1.0, 7, 7)],
)
def test_mask_count_is_floor_of_ratio_times_n(ratio, n, expected):
    assert mask_count(ratio, n) == expected == math.floor(round(ratio * n, 9))


@pytest.mark.parametrize("kind", ["true", "false", "random"])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_masks_keep_exactly_the_requested_count(kind, ratio):
    scores = torch.rand(37, generator=torch.Generator().manual_seed(1))
    masked = select_masked(scores, kind, ratio, generator=torch.Generator().manual_seed(0))
    assert masked.dtype == torch.bool and masked.shape == (37,)
    assert int(masked.sum()) == mask_count(ratio, 37)
    keep = feature_keep_mask(kind, ratio, (37,), Saliency(scores, scores[:, None], 0.0))
    assert int((keep == 0).sum()) == mask_count(ratio, 37)


def test_true_masks_the_top_scores_and_false_the_bottom():
    scores = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.9])
    assert select_masked(scores, "true", 0.5).nonzero().flatten().tolist() == [1, 3, 5]
    assert select_masked(scores, "false", 0.5).nonzero().flatten().tolist() == [0, 2, 4]
    # ties are broken by position: of the two 0.9s, the earlier one ranks higher
    assert select_masked(scores, "true", 0.2).nonzero().flatten().tolist() == [1]


def test_random_masks_are_reproducible_by_seed():
    one = feature_keep_mask("random", 0.5, (40,), seed=3)
    assert torch.equal(one, feature_keep_mask("random", 0.5, (40,), seed=3))
    assert not torch.equal(one, feature_keep_mask("random", 0.5, (40,), seed=4))
    logits_t, logits_s = torch.randn(64, 5), torch.randn(64, 5)
    target = torch.randint(0, 5, (64,))
    runs = []
    for _ in range(2):
        mask = SampleMask("random", 0.25, seed=7)
        runs.append([mask.item_weights(logits_t, logits_s, target) for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    assert not torch.equal(runs[0][0], runs[0][1])  # a fresh draw per batch


def test_grouped_masks_mask_whole_groups():
    groups = patch_groups((2, 4, 4), 2)  # 4 spatial patches spanning both channels
    assert groups.shape == (32,) and int(groups.max()) == 3
    scores = torch.tensor([0.0, 1.0, 0.2, 0.3])
    keep = feature_keep_mask(
        "true", 0.25, (2, 4, 4), Saliency(scores, scores[:, None], 0.0, groups)
    )
    assert keep[:, :2, 2:].eq(0).all() and int((keep == 0).sum()) == 8
    assert patch_groups((10,), 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]


# --- Algorithm 1 -------------------------------------------------------------------------
class PlantedTeacher(nn.Module):
    """A hand-built f_a: feature 0 is the class, feature 1 the class each sample resembles.

    ``logits_c = 4 * bump(x0 - c) + 2 * bump(x1 - c)``: feature 1 skews the non-target
    distribution towards the resembled class, which the student (uniform over non-targets)
    cannot see. Features 2.. are ignored. The first layer is a Linear, so the shortcut applies.
    """

    def __init__(self, d: int, classes: int) -> None:
        super().__init__()
        self.first = nn.Linear(d, 2, bias=False)
        with torch.no_grad():
            self.first.weight.zero_()
            self.first.weight[0, 0] = self.first.weight[1, 1] = 1.0
        self.register_buffer("classes", torch.arange(classes).float())

    def forward(self, x: Tensor) -> ModelOutput:
        h = self.first(x.flatten(1))
        bump = lambda v: torch.exp(-10 * (v[:, None] - self.classes) ** 2)  # noqa: E731
        return ModelOutput(logits=4 * bump(h[:, 0]) + 2 * bump(h[:, 1]))


def _planted(n: int = 400, d: int = 6, classes: int = 4):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n,), generator=gen)
    xa = torch.randn(n, d, generator=gen)
    xa[:, 0] = y.float()
    xa[:, 1] = ((y + 1) % classes).float()
    reference = 4 * F.one_hot(y, classes).float()  # f_b(xb): right, uniform over non-targets
    return PlantedTeacher(d, classes), xa, reference, y


@pytest.mark.parametrize("fast", [True, False])
def test_saliency_finds_the_feature_the_student_cannot_see(fast):
    teacher, xa, reference, y = _planted()
    saliency = permutation_saliency(teacher, xa, reference, y, repeats=5, fast=fast)
    assert int(saliency.score.argmax()) == 1  # the private feature carries the divergence
    assert saliency.score[1] == 1.0 and saliency.score[0] == 0.0  # the shared class feature
    assert saliency.drop[1] > 0 > saliency.drop[0]
    assert torch.allclose(saliency.drop[2:], torch.zeros(4), atol=1e-7)  # ignored features
    assert saliency.permuted.shape == (6, 5)
    keep = feature_keep_mask("true", 0.2, (6,), saliency)
    assert keep.tolist() == [1, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("groups", [None, torch.arange(30) // 4])
@pytest.mark.parametrize("fast", [True, False])
def test_vectorised_saliency_agrees_with_the_plain_loop(groups, fast):
    torch.manual_seed(0)
    model = build_model("mlp", (30,), 5, hidden=[8, 8]).eval()
    xa, y, reference = torch.randn(120, 30), torch.randint(0, 5, (120,)), torch.randn(120, 5)
    common = dict(repeats=3, groups=groups, seed=2)
    fast_result = permutation_saliency(
        model, xa, reference, y, fast=fast, max_chunk_bytes=2**16, **common
    )
    loop = permutation_saliency_loop(model, xa, reference, y, **common)
    torch.testing.assert_close(fast_result.permuted, loop.permuted, atol=1e-6, rtol=1e-5)
    assert fast_result.base == pytest.approx(loop.base, abs=1e-7)
    assert float(fast_result.score.min()) >= 0.0 and float(fast_result.score.max()) == 1.0


def test_hidden_channel_saliency_scores_each_channel():
    torch.manual_seed(0)
    model = build_model("mlp", (10,), 4, hidden=[6, 5]).eval()
    with torch.no_grad():
        model.hidden[1].weight[:, 2] = 0.0  # channel 2 of layer 0 feeds nothing
    xa, y, reference = torch.randn(100, 10), torch.randint(0, 4, (100,)), torch.randn(100, 4)
    saliency = permutation_saliency(model, xa, reference, y, repeats=2, layer="hidden.0")
    assert saliency.permuted.shape == (6, 2) and saliency.layer == "hidden.0"
    assert torch.allclose(saliency.permuted[2], torch.full((2,), saliency.base), atol=1e-7)
    channel = 4
    perms = torch.Generator().manual_seed(0)
    perm = torch.randperm(100, generator=perms)
    with torch.no_grad():
        h = model.hidden[0](xa).relu()
        h[:, channel] = h[perm, channel]
        by_hand = decoupled_jsd(model.head(model.hidden[1](h).relu()), reference, y)[1].mean()
    assert float(saliency.permuted[channel, 0]) == pytest.approx(float(by_hand), abs=1e-6)


def test_nontarget_reference_equals_decoupled_jsd():
    reference, target = torch.randn(50, 7) * 3, torch.randint(0, 7, (50,))
    stack = torch.randn(4, 50, 7) * 3
    for T in (1.0, 2.5):
        expected = torch.stack([decoupled_jsd(z, reference, target, T)[1] for z in stack])
        got = NontargetReference(reference, target, T).ncjsd(stack)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_joint_training_of_eq26_lowers_its_loss(tiny_synthetic):
    torch.manual_seed(0)
    f_a, f_b = build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)
    loader = tiny_synthetic.train_dataloader()
    history = joint_train(f_a, f_b, lambda epoch: loader, epochs=8, lr=1e-2)
    assert len(history) == 8 and history[-1] < history[0]
    assert not f_a.training and not f_b.training


def test_saliency_is_cached_by_what_defines_it(tmp_path, monkeypatch):
    base = apply_overrides(load_config("synthetic"), TINY)
    config = resolve_masks(
        {**run_config(base, "kd", 0, {"gap": 0.5}), "feature_mask": {"saliency": {"epochs": 1}}}
    )
    from datamodules import SyntheticDataModule

    dm = SyntheticDataModule(gap=0.5, n_samples=600, n_train=400)

    def network(modality: str) -> nn.Module:
        return build_model("mlp", (50,), 4)

    first = load_or_compute_saliency(config, dm, network, tmp_path)
    assert first.score.shape == (50,) and len(list((tmp_path / "saliency").iterdir())) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached saliency")

    monkeypatch.setattr("ntdh_bench.masking.compute_feature_saliency", fail)
    again = load_or_compute_saliency(config, dm, network, tmp_path)
    assert torch.equal(again.permuted, first.permuted)
    other = {**config, "seed": 1}
    with pytest.raises(AssertionError, match="recomputed"):
        load_or_compute_saliency(other, dm, network, tmp_path)


# --- the masked teacher ------------------------------------------------------------------
def test_masked_network_zeroes_masked_inputs_and_hidden_channels():
    torch.manual_seed(0)
    net = build_model("mlp", (6,), 3, hidden=[4, 4])
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    x = torch.randn(8, 6)
    masked = MaskedNetwork(net, keep)
    torch.testing.assert_close(masked(x).logits, net(x * keep).logits)
    torch.testing.assert_close(masked(x).logits, masked(x + torch.randn(8, 1) * keep.eq(0)).logits)
    assert set(masked.state_dict()) == {"keep", *(f"net.{k}" for k in net.state_dict())}
    channel_net = build_model("mlp", (6,), 3, hidden=[4, 4])
    channels = MaskedNetwork(channel_net, torch.tensor([1.0, 0.0, 0.0, 1.0]), layer="hidden.0")
    out = channels(x)
    assert out.features[0][:, 1:3].eq(0).all()
    assert masked.masked_fraction == pytest.approx(2 / 6)


def test_retrained_teacher_identity_includes_the_mask_and_fed_teacher_does_not():
    base = load_config("synthetic")
    plain = run_config(base, "kd", 0, {"gap": 0.5})
    retrained = {**plain, "feature_mask": {"kind": "true", "ratio": 0.25}}
    fed = {**plain, "feature_mask": {"kind": "true", "ratio": 0.25, "retrain_teacher": False}}
    assert teacher_identity(fed) == teacher_identity(plain)
    assert teacher_identity(retrained) != teacher_identity(plain)
    assert teacher_identity(retrained)["feature_mask"]["ratio"] == 0.25
    other_ratio = {**plain, "feature_mask": {"kind": "true", "ratio": 0.5}}
    assert teacher_identity(other_ratio) != teacher_identity(retrained)
    with pytest.raises(ValueError, match=r"feature_mask\.kind"):
        resolve_masks({**plain, "feature_mask": {"kind": "biggest"}})
    with pytest.raises(ValueError, match="weighs a distillation"):
        resolve_masks({**run_config(base, "student", 0), "sample_mask": {"kind": "true"}})


def test_feature_masked_runs_retrain_the_teacher_unless_only_fed(tmp_path):
    base = apply_overrides(load_config("synthetic"), TINY)
    env = RunEnv(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    mask = {"kind": "random", "ratio": 0.5}
    with quiet_lightning():
        plain = execute_run(run_config(base, "kd", 0, {"gap": 0.5}), env)
        teachers = tmp_path / "cache" / "teachers"
        assert len(list(teachers.iterdir())) == 1
        fed = {**run_config(base, "kd", 0, {"gap": 0.5})}
        fed["feature_mask"] = {**mask, "retrain_teacher": False}
        execute_run(fed, env)
        assert len(list(teachers.iterdir())) == 1  # the unmasked teacher, only fed the mask
        retrained = {**run_config(base, "kd", 0, {"gap": 0.5}), "feature_mask": mask}
        result = execute_run(retrained, env)
    assert len(list(teachers.iterdir())) == 2
    path = teachers / config_hash(teacher_identity(retrained)) / "model.pt"
    state = torch.load(path, weights_only=True)
    assert int((state["keep"] == 0).sum()) == 25
    assert result.metrics["teacher/test/acc"] != plain.metrics["teacher/test/acc"]
    assert not (tmp_path / "cache" / "saliency").exists()  # random masks need no saliency


# --- Algorithm 2 -------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75])
def test_sample_mask_drops_floor_ratio_n_samples_with_the_largest_ncjsd(ratio):
    gen = torch.Generator().manual_seed(0)
    logits_t, logits_s = torch.randn(30, 6, generator=gen), torch.randn(30, 6, generator=gen)
    target = torch.randint(0, 6, (30,), generator=gen)
    ncjsd = decoupled_jsd(logits_t, logits_s, target)[1]
    k = math.floor(ratio * 30)
    for kind, largest in (("true", True), ("false", False)):
        weight = SampleMask(kind, ratio).item_weights(logits_t, logits_s, target)
        dropped = set(torch.nonzero(weight == 0).flatten().tolist())
        assert len(dropped) == k
        assert dropped == set(torch.topk(ncjsd, k, largest=largest).indices.tolist())
        assert set(weight.unique().tolist()) <= {0.0, 1.0}


def test_sample_mask_on_dense_outputs_scores_valid_pixels_of_the_batch():
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = 2, 5, 4, 6
    student = ModelOutput(torch.randn(b, c, h, w, generator=gen))
    teacher = ModelOutput(torch.randn(b, c, h, w, generator=gen))
    y = torch.randint(0, c, (b, h, w), generator=gen)
    y[0, 0, 0] = 255  # unlabelled
    valid = torch.rand(b, h, w, generator=gen) > 0.3
    batch = {"y": y, "valid": valid}
    weight, fraction = SampleMask("true", 0.5)(student, teacher, batch)
    kept = valid & (y != 255)
    n = int(kept.sum())
    assert weight.shape == (b, h, w)
    assert int((weight[kept] == 0).sum()) == n // 2 and weight[~kept].eq(0).all()
    assert float(fraction) == pytest.approx((n // 2) / n)
    flat_t = teacher.logits.permute(0, 2, 3, 1)[kept]
    flat_s = student.logits.permute(0, 2, 3, 1)[kept]
    ncjsd = decoupled_jsd(flat_t, flat_s, y[kept])[1]
    dropped = torch.nonzero(weight[kept] == 0).flatten()
    assert set(dropped.tolist()) == set(torch.topk(ncjsd, n // 2).indices.tolist())


def test_pssm_matches_its_formula_on_hand_made_logits():
    logits_t = torch.tensor(
        [
            [3.0, 1.0, 0.0],  # teacher right (target 0): omega 1 whatever the student says
            [1.0, 3.0, 0.0],  # teacher wrong, student nearly parallel: (cos + 1) / 2
            [1.0, 3.0, 0.0],  # teacher wrong, student far: 0
            [0.0, 0.0, 5.0],  # teacher wrong, cosine just under the threshold: 0
        ]
    )
    logits_s = torch.tensor([[-1.0, 2.0, 0.5], [1.01, 3.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.45, 5.0]])
    target = torch.tensor([0, 0, 0, 1])
    cos = F.cosine_similarity(logits_t, logits_s, dim=1)
    assert cos[1] >= 0.996 and cos[2] < 0.996 and 0.99 < cos[3] < 0.996
    omega = pssm_weights(logits_t, logits_s, target)
    torch.testing.assert_close(omega, torch.tensor([1.0, (float(cos[1]) + 1) / 2, 0.0, 0.0]))
    weight, fraction = SampleMask("pssm")(
        ModelOutput(logits_s), ModelOutput(logits_t), {"y": target}
    )
    torch.testing.assert_close(weight, omega)
    assert float(fraction) == 0.5


def test_sample_mask_weighs_the_distillation_term_only(tiny_synthetic):
    L.seed_everything(0, verbose=False)
    teacher, student = build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)
    tiny_synthetic.setup()
    batch = next(iter(tiny_synthetic.train_dataloader()))
    logged = {}
    losses = {}
    for name, mask in (("none", None), ("all", SampleMask("true", 1.0))):
        module = CrossModalKD(
            student,
            teacher,
            build_distiller("kd"),
            4,
            lam=0.5,
            cache_teacher=False,
            sample_mask=mask,
        )
        module.log = lambda key, value, **kw: logged.__setitem__(key, float(value.detach()))
        losses[name] = module.training_step(batch, 0)
    ce = F.cross_entropy(student(batch["xb"]).logits, batch["y"])
    torch.testing.assert_close(losses["all"], 0.5 * ce)  # every sample dropped from KD only
    assert losses["none"] > losses["all"]
    assert logged["train/masked_fraction"] == 1.0


def test_metric_history_records_one_value_per_epoch(tiny_synthetic, lean_trainer):
    L.seed_everything(0, verbose=False)
    teacher, student = build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)
    module = CrossModalKD(
        student, teacher, build_distiller("kd"), 4, sample_mask=SampleMask("true", 0.25)
    )
    history = MetricHistory()
    with quiet_lightning():
        lean_trainer(max_epochs=3, callbacks=[history]).fit(module, tiny_synthetic)
    metrics = history.as_metrics()
    assert len(curve(metrics, "val/ncjsd")) == 3 and len(curve(metrics, "val/tcjsd")) == 3
    assert curve(metrics, "train/masked_fraction") == pytest.approx([0.25] * 3, abs=0.01)
    restored = MetricHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.as_metrics() == metrics
