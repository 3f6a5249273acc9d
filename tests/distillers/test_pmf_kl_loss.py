"""PMF's perception-aware KL: golden value, the confidence gate, distill_weight, dense pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntdh_bench.distillers import build_distiller

# row 0: the teacher is confident (c_t ~ 0.86) and above the student: it guides;
# row 1: the teacher is unsure (c_t < tau): gated off; row 2: the student is the more confident.
LOGITS_T = [[6.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.2, 0.1], [5.0, 0.0, 0.0, 0.0]]
LOGITS_S = [[1.0, 0.5, 0.0, 0.2], [0.0, 1.0, 0.0, 0.0], [9.0, 0.0, 0.0, 0.0]]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _golden(z_t, z_s, T=1.0, tau=0.7, d=None):
    z_t, z_s = np.asarray(z_t), np.asarray(z_s)
    conf = [1 + (p * np.log(p)).sum(1) / math.log(z_t.shape[1]) for p in map(_softmax, (z_t, z_s))]
    w = np.where((conf[0] > conf[1]) & (conf[0] >= tau), conf[0] - conf[1], 0.0)
    p_t, p_s = _softmax(z_t / T), _softmax(z_s / T)
    per = w * (p_t * np.log(p_t / p_s)).sum(1)
    d = np.ones(len(per)) if d is None else np.asarray(d)
    return T**2 * (d * per).sum() / d.sum(), w


def test_pmf_kl_equals_the_confidence_weighted_kl_of_the_formula(make_output):
    # Red if the gate (tau), the direction of the confidence gap, or the normalisation changes.
    expected, w = _golden(LOGITS_T, LOGITS_S)
    assert w[0] > 0.3 and w[1] == 0 and w[2] == 0  # the three cases of the formula
    loss = build_distiller("pmf_kl")(
        make_output(torch.tensor(LOGITS_S)), make_output(torch.tensor(LOGITS_T)),
        {"y": torch.tensor([0, 1, 0])},
    )["pmf_kl"]  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    hot, _ = _golden(LOGITS_T, LOGITS_S, T=2.0, tau=0.0)
    at_t2 = build_distiller("pmf_kl", T=2.0, tau=0.0)(
        make_output(torch.tensor(LOGITS_S)), make_output(torch.tensor(LOGITS_T)),
        {"y": torch.tensor([0, 1, 0])},
    )["pmf_kl"]  # fmt: skip
    assert at_t2.item() == pytest.approx(hot, rel=1e-5)


def test_pmf_kl_gradient_reaches_the_student_only_where_the_teacher_guides(make_output):
    z_s = torch.tensor(LOGITS_S, requires_grad=True)
    loss = build_distiller("pmf_kl", detach_weight=True)(
        make_output(z_s), make_output(torch.tensor(LOGITS_T)), {"y": torch.tensor([0, 1, 0])}
    )["pmf_kl"]
    loss.backward()
    assert z_s.grad[0].abs().sum() > 0
    assert torch.all(z_s.grad[1:] == 0)  # gated rows give nothing (red: an ungated KL)


def test_pmf_kl_dense_honours_valid_pixels_and_the_sample_mask(make_output):
    # (1, C, 1, 3) logits: pixel 1 invalid, pixel 2 masked by distill_weight -> only pixel 0.
    z_t = torch.tensor(LOGITS_T).T.reshape(1, 4, 1, 3)
    z_s = torch.tensor(LOGITS_S).T.reshape(1, 4, 1, 3)
    z_s[0, :, 0, 2] = z_s[0, :, 0, 0] - 3  # would weigh if it counted
    batch = {
        "y": torch.tensor([[[0, 1, 0]]]),
        "valid": torch.tensor([[[True, False, True]]]),
        "distill_weight": torch.tensor([[[1.0, 1.0, 0.0]]]),
    }
    dense = build_distiller("pmf_kl", task="dense")(make_output(z_s), make_output(z_t), batch)
    alone, _ = _golden(LOGITS_T[:1], LOGITS_S[:1])
    assert dense["pmf_kl"].item() == pytest.approx(alone, rel=1e-5)


def test_pmf_kl_checks_its_options():
    with pytest.raises(ValueError, match="tau"):
        build_distiller("pmf_kl", tau=1.5)
    with pytest.raises(ValueError, match="temperature"):
        build_distiller("pmf_kl", T=0.0)
