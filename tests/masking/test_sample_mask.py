"""Algorithm 2: the per-batch distillation weights, and the released code's pssm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.base import ModelOutput
from ntdh_bench.divergence import decoupled_jsd
from ntdh_bench.masking import SampleWeighting, pssm_weights


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75])
def test_sample_mask_drops_floor_ratio_n_samples_with_the_largest_ncjsd(ratio):
    gen = torch.Generator().manual_seed(0)
    logits_t, logits_s = torch.randn(30, 6, generator=gen), torch.randn(30, 6, generator=gen)
    target = torch.randint(0, 6, (30,), generator=gen)
    ncjsd = decoupled_jsd(logits_t, logits_s, target)[1]
    k = math.floor(ratio * 30)
    for kind, largest in (("true", True), ("false", False)):
        weight = SampleWeighting(kind, ratio).item_weights(logits_t, logits_s, target)
        dropped = set(torch.nonzero(weight == 0).flatten().tolist())
        assert len(dropped) == k
        assert dropped == set(torch.topk(ncjsd, k, largest=largest).indices.tolist())
        assert set(weight.unique().tolist()) <= {0.0, 1.0}


def test_random_sample_masks_are_reproducible_and_fresh_per_batch():
    logits_t, logits_s = torch.randn(64, 5), torch.randn(64, 5)
    target = torch.randint(0, 5, (64,))
    runs = []
    for _ in range(2):
        mask = SampleWeighting("random", 0.25, seed=7)
        runs.append([mask.item_weights(logits_t, logits_s, target) for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    assert not torch.equal(runs[0][0], runs[0][1])


def test_sample_mask_on_dense_outputs_scores_valid_pixels_of_the_batch():
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = 2, 5, 4, 6
    student = ModelOutput(torch.randn(b, c, h, w, generator=gen))
    teacher = ModelOutput(torch.randn(b, c, h, w, generator=gen))
    y = torch.randint(0, c, (b, h, w), generator=gen)
    y[0, 0, 0] = 255  # unlabelled
    valid = torch.rand(b, h, w, generator=gen) > 0.3
    weight, fraction = SampleWeighting("true", 0.5)(student, teacher, {"y": y, "valid": valid})
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
    weight, fraction = SampleWeighting("pssm")(
        ModelOutput(logits_s), ModelOutput(logits_t), {"y": target}
    )
    torch.testing.assert_close(weight, omega)
    assert float(fraction) == 0.5


@pytest.mark.parametrize("kind", ["true", "false"])
def test_sample_mask_ranks_by_decoupled_ncjsd_with_ties_to_the_earlier_sample(kind):
    # Red if the fused NCJSD ranking drifts from decoupled_jsd's in any bit, or ties stop
    # going to the earlier sample: repeated rows give exactly equal scores.
    gen = torch.Generator().manual_seed(4)
    rows_t, rows_s = torch.randn(9, 5, generator=gen) * 3, torch.randn(9, 5, generator=gen) * 3
    pick = torch.randint(0, 9, (200,), generator=gen)
    logits_t, logits_s, target = rows_t[pick], rows_s[pick], pick % 5
    ncjsd = decoupled_jsd(logits_t, logits_s, target)[1]
    sign = -1.0 if kind == "true" else 1.0
    ranked = sorted(range(200), key=lambda i: (sign * float(ncjsd[i]), i))
    weighting = SampleWeighting(kind, 0.3)
    weight, fraction = weighting(ModelOutput(logits_s), ModelOutput(logits_t), {"y": target})
    assert torch.nonzero(weight == 0).flatten().tolist() == sorted(ranked[:60])
    assert weight.dtype == logits_t.dtype and set(weight.unique().tolist()) == {0.0, 1.0}
    assert fraction == 60 / 200
