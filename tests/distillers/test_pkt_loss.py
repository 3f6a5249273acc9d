"""PKT: golden value from the cosine-kernel formula, zero at equality, weights, extremes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntdh_bench.distillers import build_distiller

E_S = [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [2.0, 2.0, 0.0], [-1.0, 0.5, 0.5]]
E_T = [[0.5, 1.0], [2.0, -1.0], [0.3, 0.1], [1.0, 3.0]]
EPS = 1e-7


def _conditional(e):
    e = np.asarray(e, dtype=float)
    n = len(e)
    cos = np.array(
        [
            [e[i] @ e[j] / (np.linalg.norm(e[i]) * np.linalg.norm(e[j])) for j in range(n)]
            for i in range(n)
        ]
    )
    kernel = (cos + 1) / 2
    return kernel / kernel.sum(axis=1, keepdims=True)


def _pkt(make_output, e_s, e_t, **batch):
    return build_distiller("pkt")(
        make_output(embedding=torch.as_tensor(e_s)),
        make_output(embedding=torch.as_tensor(e_t)),
        batch,
    )["pkt"]


def test_pkt_equals_weight_times_mean_entrywise_kl_of_kernel_probabilities(make_output):
    p, q = _conditional(E_S), _conditional(E_T)
    expected = 30000.0 * np.mean(q * np.log((q + EPS) / (p + EPS)))
    assert _pkt(make_output, E_S, E_T).item() == pytest.approx(expected, rel=1e-4)


def test_pkt_is_zero_when_student_equals_teacher(make_output):
    assert _pkt(make_output, E_T, E_T).item() == pytest.approx(0.0, abs=1e-6)


def test_pkt_restricts_the_batch_to_weighted_samples_and_weighs_rows(make_output):
    w = np.array([2.0, 0.0, 1.0, 1.0])
    keep = w > 0
    p = _conditional(np.asarray(E_S)[keep])
    q = _conditional(np.asarray(E_T)[keep])
    rows = np.sum(q * np.log((q + EPS) / (p + EPS)), axis=1) / keep.sum()
    expected = 30000.0 * (rows @ w[keep]) / w[keep].sum()
    loss = _pkt(make_output, E_S, E_T, distill_weight=torch.tensor(w, dtype=torch.float32))
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_pkt_is_finite_on_extreme_opposite_and_zero_features(make_output):
    e_s = torch.tensor([[1e4, 0.0], [-1e4, 0.0], [0.0, 0.0]], requires_grad=True)
    e_t = torch.tensor([[0.0, 1e4], [0.0, 1e4], [1e-8, 0.0]])
    loss = _pkt(make_output, e_s, e_t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(e_s.grad).all()
