"""SSC scores on hand-made volumes: completion IoU (occupied vs empty) and the mIoU of the
semantic classes, both over the evaluated voxels only."""

from __future__ import annotations

import math

import pytest
import torch

from ntdh_bench.ssc_metrics import SSCMetrics


def _volumes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    #                       0  1  2  3  4  5    6  7
    target = torch.tensor([0, 0, 1, 1, 2, 2, 255, 3]).view(1, 2, 2, 2)
    preds = torch.tensor([0, 1, 1, 2, 2, 2, 3, 0]).view(1, 2, 2, 2)
    valid = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    return preds, target, valid


def test_scores_of_a_hand_made_volume():
    preds, target, valid = _volumes()
    metric = SSCMetrics(num_classes=4)
    metric.update(preds, target, valid)
    scores = metric.compute()
    # voxel 6 is unlabelled. occupied: target {2,3,4,5,7}, predicted {1,2,3,4,5}
    # tp = {2,3,4,5} = 4, fp = {1} = 1, fn = {7} = 1
    assert scores["completion_iou"].item() == pytest.approx(4 / 6)
    assert scores["completion_precision"].item() == pytest.approx(4 / 5)
    assert scores["completion_recall"].item() == pytest.approx(4 / 5)
    # class 1: tp {2}, fp {1}, fn {3} -> 1/3; class 2: tp {4,5}, fp {3} -> 2/3; class 3: 0
    iou = scores["iou"]
    assert iou[1:].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert scores["ssc_miou"].item() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_voxels_outside_valid_do_not_count_and_logits_are_argmaxed():
    preds, target, valid = _volumes()
    valid.view(-1)[7] = False  # drop the missed class-3 voxel
    logits = torch.nn.functional.one_hot(preds, 4).movedim(-1, 1).float()
    metric = SSCMetrics(num_classes=4)
    metric.update(logits, target, valid)
    scores = metric.compute()
    assert scores["completion_iou"].item() == pytest.approx(4 / 5)
    assert math.isnan(scores["iou"][3].item())  # class 3 is now absent from both
    assert scores["ssc_miou"].item() == pytest.approx(0.5)


def test_scores_accumulate_over_batches_not_per_frame():
    preds, target, valid = _volumes()
    metric = SSCMetrics(num_classes=4)
    metric.update(preds, target, valid)
    metric.update(torch.zeros_like(preds), torch.zeros_like(target), valid)  # all empty, right
    assert metric.compute()["completion_iou"].item() == pytest.approx(4 / 6)
