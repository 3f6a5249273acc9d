"""RKD: golden distance and angle terms, zero at equality, scale invariance, weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ntdh_bench.distillers import build_distiller

E_S = [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [2.0, 2.0, 0.0], [-1.0, 0.5, 0.5]]
E_T = [[0.5, 1.0], [2.0, -1.0], [0.0, 0.0], [1.0, 3.0]]


def _huber(a: float, b: float) -> float:
    diff = abs(a - b)
    return 0.5 * diff**2 if diff < 1 else diff - 0.5


def _reference_terms(e_s, e_t):
    """RKD's distance and angle losses written out with loops over pairs and triplets."""
    e_s, e_t = np.asarray(e_s, dtype=float), np.asarray(e_t, dtype=float)
    n = len(e_s)

    def distances(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / d[d > 0].mean()

    def unit(v):
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    def cosines(e):
        return {
            (i, j, k): unit(e[i] - e[j]) @ unit(e[k] - e[j])
            for i, j, k in itertools.product(range(n), repeat=3)
        }

    d_s, d_t = distances(e_s), distances(e_t)
    distance = np.mean([_huber(d_s[i, j], d_t[i, j]) for i in range(n) for j in range(n)])
    a_s, a_t = cosines(e_s), cosines(e_t)
    angle = np.mean([_huber(a_s[key], a_t[key]) for key in a_s])
    return distance, angle


def _rkd(make_output, e_s, e_t, **batch):
    return build_distiller("rkd")(
        make_output(embedding=torch.as_tensor(e_s)),
        make_output(embedding=torch.as_tensor(e_t)),
        batch,
    )


def test_rkd_equals_weighted_distance_and_angle_terms(make_output):
    terms = _rkd(make_output, E_S, E_T)
    distance, angle = _reference_terms(E_S, E_T)
    assert terms["rkd_distance"].item() == pytest.approx(25.0 * distance, rel=1e-5)
    assert terms["rkd_angle"].item() == pytest.approx(50.0 * angle, rel=1e-5)


def test_rkd_weights_are_overridable(make_output):
    rkd = build_distiller("rkd", distance_weight=1.0, angle_weight=2.0)
    terms = rkd(
        make_output(embedding=torch.tensor(E_S)), make_output(embedding=torch.tensor(E_T)), {}
    )
    distance, angle = _reference_terms(E_S, E_T)
    assert terms["rkd_distance"].item() == pytest.approx(distance, rel=1e-5)
    assert terms["rkd_angle"].item() == pytest.approx(2.0 * angle, rel=1e-5)


def test_rkd_is_zero_when_student_equals_teacher(make_output):
    terms = _rkd(make_output, E_S, E_S)
    assert terms["rkd_distance"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["rkd_angle"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("scale", [1e-3, 7.0, 1e3])
def test_rkd_is_invariant_to_scaling_the_features(make_output, scale):
    base = _rkd(make_output, E_S, E_T)
    scaled = _rkd(make_output, torch.tensor(E_S) * scale, torch.tensor(E_T) / scale)
    for name in base:
        assert scaled[name].item() == pytest.approx(base[name].item(), rel=1e-4)


def test_rkd_computes_relations_among_the_weighted_samples_only(make_output):
    w = torch.tensor([1.0, 0.0, 0.5, 1.0])
    weighted = _rkd(make_output, E_S, E_T, distill_weight=w)
    keep = [0, 2, 3]
    alone = _rkd(make_output, [E_S[i] for i in keep], [E_T[i] for i in keep])
    for name in weighted:
        assert weighted[name].item() == pytest.approx(alone[name].item(), rel=1e-6)


def test_rkd_with_fewer_than_two_weighted_samples_is_zero(make_output):
    terms = _rkd(make_output, E_S, E_T, distill_weight=torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert all(v.item() == 0.0 for v in terms.values())


def test_rkd_is_finite_on_extreme_and_repeated_features(make_output):
    e_s = torch.tensor([[1e4, -1e4], [1e4, -1e4], [0.0, 0.0], [1e-8, 0.0]], requires_grad=True)
    e_t = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1e4, 1e4], [-1e4, 1e4]])
    total = sum(_rkd(make_output, e_s, e_t).values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(e_s.grad).all()
