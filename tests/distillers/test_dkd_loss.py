"""DKD: golden value from the formula, warm-up, C = 2, extreme logits, weights, dense pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntdh_bench.distillers import build_distiller

LOGITS_S = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [0.3, 0.1, -0.2, 1.1]]
LOGITS_T = [[2.0, 0.0, 1.0, 0.5], [1.5, 0.5, -0.5, 0.0], [-1.0, 2.0, 0.0, 0.4]]
TARGET = [0, 2, 3]


def _dkd_terms(z_s, z_t, target, T):
    """TCKD and NCKD per sample, written out from the definitions with float64 numpy."""
    tckd, nckd = [], []
    for zs, zt, k in zip(np.asarray(z_s) / T, np.asarray(z_t) / T, target, strict=True):
        ps, pt = np.exp(zs) / np.exp(zs).sum(), np.exp(zt) / np.exp(zt).sum()
        bs, bt = np.array([ps[k], 1 - ps[k]]), np.array([pt[k], 1 - pt[k]])
        tckd.append(np.sum(bt * np.log(bt / bs)))
        hs, ht = np.delete(ps, k), np.delete(pt, k)
        hs, ht = hs / hs.sum(), ht / ht.sum()
        nckd.append(np.sum(ht * np.log(ht / hs)))
    return np.array(tckd), np.array(nckd)


def _run(dkd, make_output, z_s, z_t, target, **extra):
    batch = {"y": torch.as_tensor(target), **extra}
    return dkd(make_output(torch.as_tensor(z_s)), make_output(torch.as_tensor(z_t)), batch)


def test_dkd_equals_alpha_tckd_plus_beta_nckd_times_t_squared(make_output):
    dkd = build_distiller("dkd", warmup=0)
    terms = _run(dkd, make_output, LOGITS_S, LOGITS_T, TARGET)
    tckd, nckd = _dkd_terms(LOGITS_S, LOGITS_T, TARGET, T=4.0)
    assert terms["tckd"].item() == pytest.approx(1.0 * 16 * tckd.mean(), rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(8.0 * 16 * nckd.mean(), rel=1e-5)


def test_dkd_overrides_alpha_beta_and_temperature(make_output):
    dkd = build_distiller("dkd", alpha=0.5, beta=2.0, T=2.0, warmup=0)
    terms = _run(dkd, make_output, LOGITS_S, LOGITS_T, TARGET)
    tckd, nckd = _dkd_terms(LOGITS_S, LOGITS_T, TARGET, T=2.0)
    assert terms["tckd"].item() == pytest.approx(0.5 * 4 * tckd.mean(), rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(2.0 * 4 * nckd.mean(), rel=1e-5)


@pytest.mark.parametrize(("epoch", "factor"), [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)])
def test_dkd_warmup_is_linear_and_nonzero_in_the_first_epoch(make_output, epoch, factor):
    full = _run(build_distiller("dkd", warmup=0), make_output, LOGITS_S, LOGITS_T, TARGET)
    dkd = build_distiller("dkd")
    dkd.set_epoch(epoch)
    warmed = _run(dkd, make_output, LOGITS_S, LOGITS_T, TARGET)
    for name in ("tckd", "nckd"):
        assert warmed[name].item() == pytest.approx(factor * full[name].item(), rel=1e-6)


def test_dkd_is_zero_when_student_equals_teacher(make_output):
    terms = _run(build_distiller("dkd", warmup=0), make_output, LOGITS_T, LOGITS_T, TARGET)
    assert sum(v.item() for v in terms.values()) == pytest.approx(0.0, abs=1e-7)


def test_dkd_with_two_classes_has_zero_nckd_and_the_tckd_of_the_formula(make_output):
    z_s, z_t, target = [[0.2, 1.0], [2.0, -1.0]], [[1.0, 0.0], [0.5, 0.7]], [0, 1]
    terms = _run(build_distiller("dkd", warmup=0), make_output, z_s, z_t, target)
    tckd, _ = _dkd_terms(z_s, z_t, target, T=4.0)
    assert terms["nckd"].item() == 0.0
    assert terms["tckd"].item() == pytest.approx(16 * tckd.mean(), rel=1e-5)


def test_dkd_is_finite_with_finite_gradients_on_extreme_logits(make_output):
    z_s = torch.tensor([[1e3, -1e3, 0.0], [-1e3, 1e3, 1e3]], requires_grad=True)
    z_t = torch.tensor([[-1e3, 1e3, 0.0], [1e3, -1e3, -1e3]])
    terms = _run(build_distiller("dkd", warmup=0), make_output, z_s, z_t, [0, 2])
    total = sum(terms.values())
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(z_s.grad).all()


def test_dkd_honours_distill_weight(make_output):
    dkd = build_distiller("dkd", warmup=0)
    w = torch.tensor([0.0, 1.0, 3.0])
    weighted = _run(dkd, make_output, LOGITS_S, LOGITS_T, TARGET, distill_weight=w)
    tckd, nckd = _dkd_terms(LOGITS_S, LOGITS_T, TARGET, T=4.0)
    assert weighted["tckd"].item() == pytest.approx(16 * (tckd @ w.numpy()) / 4, rel=1e-5)
    assert weighted["nckd"].item() == pytest.approx(8 * 16 * (nckd @ w.numpy()) / 4, rel=1e-5)


def test_dkd_on_dense_outputs_averages_over_valid_labelled_pixels(make_output):
    gen = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    y = torch.randint(0, 4, (2, 3, 3), generator=gen)
    y[0, 0, 0] = 255
    valid = torch.rand(2, 3, 3, generator=gen) > 0.3
    dkd = build_distiller("dkd", warmup=0, task="dense")
    dense = dkd(make_output(z_s), make_output(z_t), {"y": y, "valid": valid})
    keep = valid & (y != 255)
    flat_s, flat_t = z_s.permute(0, 2, 3, 1)[keep], z_t.permute(0, 2, 3, 1)[keep]
    tckd, nckd = _dkd_terms(flat_s.numpy(), flat_t.numpy(), y[keep].tolist(), T=4.0)
    assert dense["tckd"].item() == pytest.approx(16 * tckd.mean(), rel=1e-5)
    assert dense["nckd"].item() == pytest.approx(8 * 16 * nckd.mean(), rel=1e-5)
