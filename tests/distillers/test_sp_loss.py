"""SP: golden value from row-normalised Gram matrices, zero at equality, weights, extremes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntdh_bench.distillers import build_distiller

A_S = [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [2.0, 2.0, 0.0]]
A_T = [[0.5, 1.0], [2.0, -1.0], [0.3, 0.1]]


def _normalised_gram(a):
    a = np.asarray(a, dtype=float).reshape(len(a), -1)
    g = a @ a.T
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _sp(make_output, a_s, a_t, **batch):
    student = make_output(features=[torch.zeros(len(a_s), 1), torch.as_tensor(a_s)])
    teacher = make_output(features=[torch.zeros(len(a_t), 1), torch.as_tensor(a_t)])
    return build_distiller("sp")(student, teacher, batch)["sp"]


def test_sp_equals_weight_times_squared_frobenius_over_b_squared(make_output):
    diff = _normalised_gram(A_T) - _normalised_gram(A_S)
    expected = 3000.0 * np.sum(diff**2) / 3**2
    assert _sp(make_output, A_S, A_T).item() == pytest.approx(expected, rel=1e-5)


def test_sp_flattens_feature_maps(make_output):
    a_s, a_t = torch.randn(3, 2, 2, 2), torch.randn(3, 4, 1, 1)
    diff = _normalised_gram(a_t.numpy()) - _normalised_gram(a_s.numpy())
    assert _sp(make_output, a_s, a_t).item() == pytest.approx(
        3000.0 * np.sum(diff**2) / 9, rel=1e-4
    )


def test_sp_is_zero_when_student_equals_teacher(make_output):
    assert _sp(make_output, A_T, A_T).item() == pytest.approx(0.0, abs=1e-6)


def test_sp_computes_similarities_among_the_weighted_samples_only(make_output):
    weighted = _sp(make_output, A_S, A_T, distill_weight=torch.tensor([1.0, 0.0, 0.3]))
    alone = _sp(make_output, [A_S[0], A_S[2]], [A_T[0], A_T[2]])
    assert weighted.item() == pytest.approx(alone.item(), rel=1e-6)


def test_sp_is_finite_on_extreme_and_zero_features(make_output):
    a_s = torch.tensor([[1e4, -1e4], [0.0, 0.0], [1e-8, 1e4]], requires_grad=True)
    a_t = torch.tensor([[0.0, 0.0], [1e4, 1e4], [-1e4, 1e4]])
    loss = _sp(make_output, a_s, a_t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a_s.grad).all()
