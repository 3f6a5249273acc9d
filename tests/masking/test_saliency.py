"""Algorithm 1: Eq. 26 joint training and both readings of the saliency score."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import build_model
from models.base import ModelOutput
from models.mlp import MLP
from ntdh_bench.divergence import decoupled_jsd
from ntdh_bench.masking import (
    NontargetReference,
    compute_saliency,
    feature_keep_mask,
    joint_train,
    saliency_loop,
)

CLASSES = 4


class PlantedTeacher(nn.Module):
    """A hand-built ``f_a`` over ``[shared | private | noise]`` blocks of ``CLASSES`` columns.

    ``xa = [onehot(y), onehot((y + 1) % C), noise]`` and ``logits = 4 * shared + 2 * private``:
    the shared block raises only the target logit (the student sees it too), the private block
    skews the non-target distribution towards the class each sample resembles, which the
    student (uniform over non-targets) cannot see; noise columns are ignored.
    """

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3 * CLASSES, CLASSES, bias=False)
        with torch.no_grad():
            eye = torch.eye(CLASSES)
            self.first.weight.copy_(torch.cat([4 * eye, 2 * eye, torch.zeros(CLASSES, CLASSES)], 1))

    def forward(self, x: Tensor) -> ModelOutput:
        return ModelOutput(logits=self.first(x.flatten(1)))


def _planted(n: int = 400):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    xa = torch.cat(
        [
            F.one_hot(y, CLASSES).float(),
            F.one_hot((y + 1) % CLASSES, CLASSES).float(),
            torch.randn(n, CLASSES, generator=gen),
        ],
        dim=1,
    )
    reference = 4 * F.one_hot(y, CLASSES).float()  # f_b(xb): right, uniform over non-targets
    return PlantedTeacher(), xa, reference, y


SHARED, PRIVATE = list(range(CLASSES)), list(range(CLASSES, 2 * CLASSES))


@pytest.mark.parametrize("fast", [True, False])
def test_permuted_true_mask_takes_the_columns_whose_permutation_raises_ncjsd_most(fast):
    teacher, xa, reference, y = _planted()
    saliency = compute_saliency(teacher, xa, reference, y, reading="permuted", repeats=5, fast=fast)
    permuted = saliency.perturbed.mean(1)
    assert saliency.perturbed.shape == (12, 5)
    # permuting a shared column puts a target bump on a non-target class: NCJSD rises most;
    # permuting a private column removes some samples' skew: NCJSD falls
    assert permuted[SHARED].min() > saliency.base > permuted[PRIVATE].max()
    torch.testing.assert_close(permuted[8:], torch.full((4,), saliency.base))  # noise: no change
    assert float(saliency.score.max()) == 1.0
    keep = feature_keep_mask("true", 1 / 3, (12,), saliency)
    assert (keep == 0).nonzero().flatten().tolist() == SHARED


@pytest.mark.parametrize("fast", [True, False])
def test_ablation_true_mask_takes_the_teacher_only_block(fast):
    teacher, xa, reference, y = _planted()
    saliency = compute_saliency(teacher, xa, reference, y, reading="ablation", fast=fast)
    assert saliency.perturbed.shape == (12, 1)
    score = saliency.score  # NCJSD(base) - NCJSD(zeroed): what removing the item takes away
    assert score[PRIVATE].min() > 0
    torch.testing.assert_close(score[SHARED], torch.zeros(4), atol=1e-6, rtol=0)  # target only
    torch.testing.assert_close(score[8:], torch.zeros(4), atol=1e-6, rtol=0)
    keep = feature_keep_mask("true", 1 / 3, (12,), saliency)
    assert (keep == 0).nonzero().flatten().tolist() == PRIVATE
    false = feature_keep_mask("false", 1 / 3, (12,), saliency)
    assert not set((false == 0).nonzero().flatten().tolist()) & set(PRIVATE)


@pytest.mark.parametrize("reading", ["permuted", "ablation"])
@pytest.mark.parametrize("groups", [None, torch.arange(30) // 4])
@pytest.mark.parametrize("fast", [True, False])
def test_vectorised_saliency_agrees_with_the_plain_loop(reading, groups, fast):
    torch.manual_seed(0)
    model = build_model("mlp", (30,), 5, hidden=[8, 8]).eval()
    xa, y, reference = torch.randn(120, 30), torch.randint(0, 5, (120,)), torch.randn(120, 5)
    common = dict(reading=reading, repeats=3, groups=groups, seed=2)
    vectorised = compute_saliency(
        model, xa, reference, y, fast=fast, max_chunk_bytes=2**16, **common
    )
    loop = saliency_loop(model, xa, reference, y, **common)
    torch.testing.assert_close(vectorised.perturbed, loop.perturbed, atol=1e-6, rtol=1e-5)
    assert vectorised.base == pytest.approx(loop.base, abs=1e-7)


@pytest.mark.parametrize("hidden", [[], [7]])
def test_shallow_mlps_agree_with_the_plain_loop(hidden):
    torch.manual_seed(0)
    model = MLP(10, 4, hidden).eval()
    xa, y, reference = torch.randn(40, 10), torch.randint(0, 4, (40,)), torch.randn(40, 4)
    vectorised = compute_saliency(model, xa, reference, y, repeats=2)
    loop = saliency_loop(model, xa, reference, y, repeats=2)
    torch.testing.assert_close(vectorised.perturbed, loop.perturbed, atol=1e-6, rtol=1e-5)


def test_hidden_channel_saliency_scores_each_channel():
    torch.manual_seed(0)
    model = build_model("mlp", (10,), 4, hidden=[6, 5]).eval()
    with torch.no_grad():
        model.hidden[1].weight[:, 2] = 0.0  # channel 2 of layer 0 feeds nothing
    xa, y, reference = torch.randn(100, 10), torch.randint(0, 4, (100,)), torch.randn(100, 4)
    saliency = compute_saliency(model, xa, reference, y, repeats=2, layer="hidden.0")
    assert saliency.perturbed.shape == (6, 2) and saliency.layer == "hidden.0"
    assert torch.allclose(saliency.perturbed[2], torch.full((2,), saliency.base), atol=1e-7)
    channel = 4
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = model.hidden[0](xa).relu()
        h[:, channel] = h[perm, channel]
        by_hand = decoupled_jsd(model.head(model.hidden[1](h).relu()), reference, y)[1].mean()
    assert float(saliency.perturbed[channel, 0]) == pytest.approx(float(by_hand), abs=1e-6)
    zeroed = compute_saliency(model, xa, reference, y, reading="ablation", layer="hidden.0")
    with torch.no_grad():
        h = model.hidden[0](xa).relu()
        h[:, channel] = 0.0
        by_hand = decoupled_jsd(model.head(model.hidden[1](h).relu()), reference, y)[1].mean()
    assert float(zeroed.perturbed[channel, 0]) == pytest.approx(float(by_hand), abs=1e-6)


def test_nontarget_reference_equals_decoupled_jsd():
    reference, target = torch.randn(50, 7) * 3, torch.randint(0, 7, (50,))
    stack = torch.randn(4, 50, 7) * 3
    for T in (1.0, 2.5):
        expected = torch.stack([decoupled_jsd(z, reference, target, T)[1] for z in stack])
        got = NontargetReference(reference, target, T).ncjsd(stack)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_nontarget_reference_reads_classes_first_and_survives_huge_logits():
    gen = torch.Generator().manual_seed(1)
    reference, target = torch.randn(60, 6, generator=gen), torch.randint(0, 6, (60,), generator=gen)
    stack = torch.randn(3, 60, 6, generator=gen)
    ref = NontargetReference(reference, target)
    torch.testing.assert_close(ref.ncjsd_classes_first(stack.movedim(-1, 0)), ref.ncjsd(stack))
    # logits of magnitude 1e3: probabilities underflow to exactly 0 on both sides (the floored
    # log(p + q) path); the result stays finite and matches a float64 log-space reference
    big_ref, big = reference * 1e3, stack * 1e3
    got = NontargetReference(big_ref, target).ncjsd(big)
    expected = torch.stack(
        [decoupled_jsd(z.double(), big_ref.double(), target)[1] for z in big]
    ).float()
    assert torch.isfinite(got).all() and NontargetReference(big_ref, target).floor
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("reading", ["permuted", "ablation"])
def test_items_their_perturbation_leaves_unchanged_tie_with_the_base_exactly(reading):
    """Constant columns permute to themselves and zero columns zero to themselves: such items
    score the base NCJSD exactly, as in the loop, so they tie and rank in item order."""
    torch.manual_seed(0)
    model = build_model("mlp", (12,), 4, hidden=[8, 8]).eval()
    xa, y, reference = torch.randn(80, 12), torch.randint(0, 4, (80,)), torch.randn(80, 4)
    xa[:, [2, 7]] = 0.0
    xa[:, [4, 9]] = 1.5  # constant: a no-op only for the permuted reading
    vectorised = compute_saliency(model, xa, reference, y, reading=reading, repeats=3)
    loop = saliency_loop(model, xa, reference, y, reading=reading, repeats=3)
    same = [2, 7] + ([4, 9] if reading == "permuted" else [])
    assert (vectorised.perturbed[same] == vectorised.base).all()
    assert (loop.perturbed[same] == loop.base).all()
    for kind in ("true", "false"):
        for ratio in (0.25, 0.5, 0.75):
            torch.testing.assert_close(
                feature_keep_mask(kind, ratio, (12,), vectorised),
                feature_keep_mask(kind, ratio, (12,), loop),
            )


def test_mlp_subclass_with_its_own_forward_goes_through_the_model(caplog):
    """The engine's MLP tail (plain matrix products) is for :class:`MLP`'s own forward only;
    a subclass that changes the logits runs through its forward, with no fallback warning."""

    class Doubled(MLP):
        def forward(self, x: Tensor) -> ModelOutput:
            out = super().forward(x)
            return ModelOutput(logits=2 * out.logits)

    torch.manual_seed(0)
    model = Doubled(10, 4, [6]).eval()
    xa, y, reference = torch.randn(50, 10), torch.randint(0, 4, (50,)), torch.randn(50, 4)
    with caplog.at_level(logging.WARNING, logger="ntdh_bench.masking.saliency"):
        vectorised = compute_saliency(model, xa, reference, y, repeats=2)
    assert not caplog.records
    loop = saliency_loop(model, xa, reference, y, repeats=2)
    torch.testing.assert_close(vectorised.perturbed, loop.perturbed, atol=1e-6, rtol=1e-5)


class _DenseNet(nn.Module):
    """A per-pixel classifier (1x1 convolutions): dense logits ``(B, C, H, W)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 5, kernel_size=1)

    def forward(self, x: Tensor) -> ModelOutput:
        return ModelOutput(logits=self.conv(x).tanh() * 3)


def test_dense_saliency_equals_a_by_hand_ablation_over_the_valid_pixels():
    torch.manual_seed(0)
    model = _DenseNet().eval()
    xa = torch.randn(6, 2, 3, 4)
    reference, target = torch.randn(6, 5, 3, 4), torch.randint(0, 5, (6, 3, 4))
    valid = torch.rand(6, 3, 4) > 0.3
    saliency = compute_saliency(model, xa, reference, target, reading="ablation", valid=valid)
    feature = 13  # channel 1, row 0, column 1
    with torch.no_grad():
        x = xa.flatten(1).clone()
        x[:, feature] = 0.0
        logits = model(x.view_as(xa)).logits
    keep = valid
    z, ref_z = logits.movedim(1, -1)[keep], reference.movedim(1, -1)[keep]
    by_hand = decoupled_jsd(z, ref_z, target[keep])[1].mean()
    assert float(saliency.perturbed[feature, 0]) == pytest.approx(float(by_hand), abs=1e-6)


def _mean_ncjsd(f_a: nn.Module, f_b: nn.Module, data: dict[str, Tensor]) -> float:
    with torch.no_grad():
        return float(
            decoupled_jsd(f_a(data["xa"]).logits, f_b(data["xb"]).logits, data["y"])[1].mean()
        )


def test_eq26_joint_training_lowers_ncjsd_against_cross_entropy_alone(tiny_synthetic):
    """Dropping the NCJSD term from Eq. 26 turns this red."""
    loader = tiny_synthetic.train_dataloader()
    epochs, lr = 6, 1e-2
    torch.manual_seed(0)
    f_a, f_b = build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)
    history = joint_train(f_a, f_b, lambda epoch: loader, epochs=epochs, lr=lr)
    assert len(history) == epochs and history[-1] < history[0]
    assert not f_a.training and not f_b.training

    torch.manual_seed(0)  # the same networks, trained on the cross-entropies alone
    g_a, g_b = build_model("mlp", (50,), 4), build_model("mlp", (50,), 4)
    optimizer = torch.optim.Adam([*g_a.parameters(), *g_b.parameters()], lr=lr)
    for _ in range(epochs):
        for batch in loader:
            loss = F.cross_entropy(g_a(batch["xa"]).logits, batch["y"]) + F.cross_entropy(
                g_b(batch["xb"]).logits, batch["y"]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    data = tiny_synthetic.split_tensors("train")
    assert _mean_ncjsd(f_a, f_b, data) < 0.7 * _mean_ncjsd(g_a.eval(), g_b.eval(), data)
