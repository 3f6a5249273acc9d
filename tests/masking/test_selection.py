"""How many items a mask removes and which."""

from __future__ import annotations

import math

import pytest
import torch

from ntdh_bench.masking import (
    Saliency,
    feature_keep_mask,
    mask_count,
    masked_indices,
    patch_groups,
    select_masked,
)


@pytest.mark.parametrize(
    ("ratio", "n", "expected"),
    [(0.25, 50, 12), (0.5, 50, 25), (0.29, 100, 29), (0.1, 5, 0), (0.9, 10, 9), (1.0, 7, 7)],
)
def test_mask_count_is_floor_of_ratio_times_n(ratio, n, expected):
    assert mask_count(ratio, n) == expected == math.floor(round(ratio * n, 9))


@pytest.mark.parametrize("kind", ["true", "false", "random"])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_masks_keep_exactly_the_requested_count(kind, ratio):
    scores = torch.rand(37, generator=torch.Generator().manual_seed(1))
    masked = select_masked(scores, kind, ratio, generator=torch.Generator().manual_seed(0))
    assert masked.dtype == torch.bool and masked.shape == (37,)
    assert int(masked.sum()) == mask_count(ratio, 37)
    saliency = Saliency("permuted", scores[:, None], 0.0)
    keep = feature_keep_mask(kind, ratio, (37,), saliency)
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


def test_grouped_masks_mask_whole_groups():
    groups = patch_groups((2, 4, 4), 2)  # 4 spatial patches spanning both channels
    assert groups.shape == (32,) and int(groups.max()) == 3
    scores = torch.tensor([0.0, 1.0, 0.2, 0.3])
    saliency = Saliency("permuted", scores[:, None], 0.0, groups)
    keep = feature_keep_mask("true", 0.25, (2, 4, 4), saliency)
    assert keep[:, :2, 2:].eq(0).all() and int((keep == 0).sum()) == 8
    assert patch_groups((10,), 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]


@pytest.mark.parametrize("kind", ["true", "false"])
def test_ranked_masks_match_a_stable_ranking_with_many_ties(kind):
    # Red if the selection stops breaking ties by position (e.g. an unstable sort or topk):
    # the reference ranks in Python, highest (lowest) score first, then the earlier index.
    gen = torch.Generator().manual_seed(3)
    sign = -1.0 if kind == "true" else 1.0
    for n in (1, 7, 64, 257):
        scores = torch.randint(0, 4, (n,), generator=gen).float() / 4  # four distinct values
        for ratio in (0.1, 0.25, 0.5, 0.9):
            k = mask_count(ratio, n)
            ranked = sorted(range(n), key=lambda i: (sign * float(scores[i]), i))
            expected = sorted(ranked[:k])
            assert masked_indices(scores, kind, ratio).sort().values.tolist() == expected
            assert select_masked(scores, kind, ratio).nonzero().flatten().tolist() == expected


def test_masked_indices_and_select_masked_draw_the_same_random_set():
    index = masked_indices(None, "random", 0.25, 40, torch.Generator().manual_seed(5))
    masked = select_masked(None, "random", 0.25, 40, torch.Generator().manual_seed(5))
    assert len(index) == 10 and masked.nonzero().flatten().tolist() == sorted(index.tolist())
