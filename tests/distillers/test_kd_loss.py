"""Hinton's KD: golden value, zero at equality, weights, dense pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntdh_bench.distillers import build_distiller

LOGITS_S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
LOGITS_T = [[2.0, 0.0, 1.0], [1.5, 0.5, -0.5]]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_kd_equals_t_squared_batchmean_kl(make_output):
    T = 4.0
    p_t = _softmax(np.array(LOGITS_T) / T)
    p_s = _softmax(np.array(LOGITS_S) / T)
    expected = T**2 * np.mean(np.sum(p_t * np.log(p_t / p_s), axis=1))
    batch = {"y": torch.tensor([0, 2])}
    loss = build_distiller("kd")(
        make_output(torch.tensor(LOGITS_S)), make_output(torch.tensor(LOGITS_T)), batch
    )["kd"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kd_is_zero_when_student_equals_teacher(make_output):
    z = torch.tensor(LOGITS_T)
    loss = build_distiller("kd")(
        make_output(z), make_output(z.clone()), {"y": torch.tensor([0, 1])}
    )
    assert loss["kd"].item() == pytest.approx(0.0, abs=1e-7)


def test_kd_honours_distill_weight(make_output):
    kd = build_distiller("kd")
    s, t = make_output(torch.tensor(LOGITS_S)), make_output(torch.tensor(LOGITS_T))
    only_second = kd(s, t, {"y": torch.tensor([0, 2]), "distill_weight": torch.tensor([0.0, 1.0])})
    alone = kd(make_output(s.logits[1:]), make_output(t.logits[1:]), {"y": torch.tensor([2])})
    assert only_second["kd"].item() == pytest.approx(alone["kd"].item(), rel=1e-6)


def test_kd_is_finite_with_finite_gradients_on_extreme_logits(make_output):
    z_s = torch.tensor([[1e3, -1e3, 0.0], [-1e3, 1e3, 1e3]], requires_grad=True)
    z_t = torch.tensor([[-1e3, 1e3, 0.0], [1e3, -1e3, -1e3]])
    loss = build_distiller("kd")(make_output(z_s), make_output(z_t), {"y": torch.tensor([0, 2])})
    loss["kd"].backward()
    assert torch.isfinite(loss["kd"]) and torch.isfinite(z_s.grad).all()


def test_kd_with_every_weight_zero_is_zero_with_zero_gradients(make_output):
    # weighted_mean divides by the clamped total weight instead of branching on it.
    z_s = torch.tensor(LOGITS_S, requires_grad=True)
    batch = {"y": torch.tensor([0, 2]), "distill_weight": torch.zeros(2)}
    loss = build_distiller("kd")(make_output(z_s), make_output(torch.tensor(LOGITS_T)), batch)
    loss["kd"].backward()
    assert loss["kd"].item() == 0.0 and torch.equal(z_s.grad, torch.zeros_like(z_s))
