"""Divergences: the exact decomposition identity, JSD properties, and numerical safety."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ntdh_bench.divergence import (
    decoupled_jsd,
    decoupled_kl,
    divergence_report,
    flatten_dense,
    jsd,
    kl,
    nontarget_mass,
)

LN2 = math.log(2.0)


@st.composite
def logit_pairs(draw, max_scale: float = 1e3):
    """Teacher and student logits (float64) with targets, from tame to extreme scales."""
    n = draw(st.integers(1, 8))
    c = draw(st.sampled_from([2, 3, 10, 100]))
    scale = draw(st.sampled_from([1e-3, 1.0, 10.0, 100.0, max_scale]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    zt = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale
    zs = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale
    target = torch.randint(0, c, (n,), generator=gen)
    temperature = draw(st.sampled_from([0.5, 1.0, 4.0]))
    return zt, zs, target, temperature


def _assert_identity(zt, zs, target, T, rtol=1e-5, atol=1e-9):
    full = kl(zt, zs, T)
    tckl, nckl = decoupled_kl(zt, zs, target, T)
    rebuilt = tckl + nontarget_mass(zt, target, T) * nckl
    torch.testing.assert_close(rebuilt, full, rtol=rtol, atol=atol)


@settings(max_examples=300, deadline=None)
@given(logit_pairs())
def test_kl_equals_tckl_plus_weighted_nckl(pair):
    zt, zs, target, T = pair
    _assert_identity(zt, zs, target, T)


@pytest.mark.parametrize("c", [2, 100])
@pytest.mark.parametrize("case", ["target_near_1", "target_near_0", "huge_mixed"])
def test_identity_and_finiteness_on_extreme_logits(c, case):
    gen = torch.Generator().manual_seed(c)
    n = 16
    target = torch.randint(0, c, (n,), generator=gen)
    zt = torch.randn(n, c, generator=gen, dtype=torch.float64)
    zs = torch.randn(n, c, generator=gen, dtype=torch.float64)
    rows = torch.arange(n)
    if case == "target_near_1":  # p_k rounds to 1 for the teacher, not for the student
        zt[rows, target] = 1e3
        zs[rows, target] = -5.0
    elif case == "target_near_0":  # p_k rounds to 0
        zt[rows, target] = -1e3
        zs[rows, target] = 1e3
    else:
        zt = zt.sign() * 1e3
        zs = -zs.sign() * 1e3
    _assert_identity(zt, zs, target, 1.0)
    for name, value in divergence_report(zt, zs, target).items():
        assert torch.isfinite(value).all(), name
        assert (value >= -1e-9).all(), name


@settings(max_examples=200, deadline=None)
@given(logit_pairs())
def test_jsd_is_symmetric_bounded_by_ln2_and_zero_on_equal_inputs(pair):
    zt, zs, target, T = pair
    tc, nc = decoupled_jsd(zt, zs, target, T)
    tc_swapped, nc_swapped = decoupled_jsd(zs, zt, target, T)
    assert torch.equal(tc, tc_swapped) and torch.equal(nc, nc_swapped)
    full = jsd(zt, zs, T)
    for value in (tc, nc, full):
        assert torch.isfinite(value).all()
        assert (value >= -1e-12).all() and (value <= LN2 + 1e-12).all()
    tc_same, nc_same = decoupled_jsd(zt, zt, target, T)
    assert torch.allclose(tc_same, torch.zeros_like(tc_same), atol=1e-12)
    assert torch.allclose(nc_same, torch.zeros_like(nc_same), atol=1e-12)


def test_jsd_reaches_ln2_for_disjoint_distributions():
    # Teacher certain of class 0, student certain of class 1; target 2 is neither.
    zt = torch.tensor([[1e3, 0.0, 0.0, 0.0]], dtype=torch.float64)
    zs = torch.tensor([[0.0, 1e3, 0.0, 0.0]], dtype=torch.float64)
    _, nc = decoupled_jsd(zt, zs, torch.tensor([2]))
    assert nc.item() == pytest.approx(LN2, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(logit_pairs())
def test_gradients_are_finite(pair):
    zt, zs, target, T = pair
    zt = zt.float().requires_grad_(True)
    zs = zs.float().requires_grad_(True)
    report = divergence_report(zt, zs, target, T)
    total = sum(v.sum() for v in report.values())
    total.backward()
    assert torch.isfinite(zt.grad).all() and torch.isfinite(zs.grad).all()


def test_nckl_is_zero_for_two_classes():
    gen = torch.Generator().manual_seed(0)
    zt, zs = torch.randn(32, 2, generator=gen), torch.randn(32, 2, generator=gen)
    target = torch.randint(0, 2, (32,), generator=gen)
    _, nckl = decoupled_kl(zt, zs, target)
    _, ncjsd = decoupled_jsd(zt, zs, target)
    assert torch.equal(nckl, torch.zeros(32)) and torch.equal(ncjsd, torch.zeros(32))
    tckl, _ = decoupled_kl(zt, zs, target)
    torch.testing.assert_close(tckl, kl(zt, zs))  # with C = 2, the binary split is everything


def test_values_match_the_definitions_on_a_hand_made_case():
    # p_t = [0.7, 0.2, 0.1], p_s = [0.4, 0.4, 0.2], target 0: written out by hand.
    pt = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    ps = torch.tensor([[0.4, 0.4, 0.2]], dtype=torch.float64)
    target = torch.tensor([0])
    tckl, nckl = decoupled_kl(pt.log(), ps.log(), target)
    expected_tckl = 0.7 * math.log(0.7 / 0.4) + 0.3 * math.log(0.3 / 0.6)
    ht, hs = [2 / 3, 1 / 3], [2 / 3, 1 / 3]  # non-target shapes happen to agree
    expected_nckl = sum(a * math.log(a / b) for a, b in zip(ht, hs, strict=True))
    assert tckl.item() == pytest.approx(expected_tckl, rel=1e-12)
    assert nckl.item() == pytest.approx(expected_nckl, abs=1e-12)
    m = [(0.7 + 0.4) / 2, (0.3 + 0.6) / 2]
    expected_tcjsd = 0.5 * (0.7 * math.log(0.7 / m[0]) + 0.3 * math.log(0.3 / m[1])) + 0.5 * (
        0.4 * math.log(0.4 / m[0]) + 0.6 * math.log(0.6 / m[1])
    )
    tcjsd, _ = decoupled_jsd(pt.log(), ps.log(), target)
    assert tcjsd.item() == pytest.approx(expected_tcjsd, rel=1e-12)


def test_temperature_scales_logits():
    gen = torch.Generator().manual_seed(1)
    zt, zs = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    torch.testing.assert_close(kl(zt, zs, T=4.0), kl(zt / 4, zs / 4))


def test_half_precision_inputs_are_computed_in_float32():
    z = torch.randn(4, 10).half()
    out = kl(z, z.flip(0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_shapes_and_temperatures_raise():
    with pytest.raises(ValueError, match="shape"):
        kl(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        kl(torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="temperature"):
        kl(torch.zeros(3, 2), torch.zeros(3, 2), T=0)
    with pytest.raises(ValueError, match="target"):
        decoupled_kl(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


def test_flatten_dense_keeps_valid_labelled_pixels():
    logits = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    y = torch.tensor([[[0, 255], [1, 2]], [[2, 1], [0, 0]]])
    valid = torch.tensor([[[True, True], [False, True]], [[True, True], [True, False]]])
    flat, target = flatten_dense(logits, y, valid)
    # kept pixels: (0,0,0), (0,1,1), (1,0,0), (1,0,1), (1,1,0)
    assert target.tolist() == [0, 2, 2, 1, 0]
    torch.testing.assert_close(flat[1], logits[0, :, 1, 1])
    with pytest.raises(ValueError, match="dense outputs"):
        flatten_dense(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_nckl_and_ncjsd_by_hand_on_non_proportional_non_target_shapes():
    """p_t = [.5, .3, .15, .05], p_s = [.2, .2, .2, .4], target 0: the non-target parts
    [.6, .3, .1] and [.25, .25, .5] differ in shape, not only in scale."""
    m = math
    p_t, p_s = torch.tensor([[0.5, 0.3, 0.15, 0.05]]), torch.tensor([[0.2, 0.2, 0.2, 0.4]])
    target = torch.tensor([0])
    hat_t, hat_s = [0.6, 0.3, 0.1], [0.25, 0.25, 0.5]
    nckl = sum(a * m.log(a / b) for a, b in zip(hat_t, hat_s, strict=True))
    mid = [(a + b) / 2 for a, b in zip(hat_t, hat_s, strict=True)]
    ncjsd = 0.5 * sum(a * m.log(a / c) for a, c in zip(hat_t, mid, strict=True)) + 0.5 * sum(
        b * m.log(b / c) for b, c in zip(hat_s, mid, strict=True)
    )
    tckl = 0.5 * m.log(0.5 / 0.2) + 0.5 * m.log(0.5 / 0.8)
    got_tckl, got_nckl = decoupled_kl(p_t.log(), p_s.log(), target)
    _, got_ncjsd = decoupled_jsd(p_t.log(), p_s.log(), target)
    assert float(got_nckl) == pytest.approx(nckl, rel=1e-5)
    assert float(got_tckl) == pytest.approx(tckl, rel=1e-5)
    assert float(got_ncjsd) == pytest.approx(ncjsd, rel=1e-5)
    swapped = decoupled_kl(p_s.log(), p_t.log(), target)[1]
    assert float(swapped) != pytest.approx(nckl, rel=1e-2)  # teacher and student not symmetric


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_nontarget_jsd_is_bit_identical_to_decoupled_jsd(T):
    # Red if the NCJSD-only path Algorithm 2 ranks samples by (each training step) drifts from
    # decoupled_jsd's NCJSD in any bit: masks chosen by rank would then differ from before.
    from ntdh_bench.divergence import nontarget_jsd

    gen = torch.Generator().manual_seed(0)
    logits_t = torch.randn(257, 7, generator=gen) * 5
    logits_s = torch.randn(257, 7, generator=gen) * 5
    logits_t[0] = torch.tensor([900.0, -900.0, 0, 0, 0, 0, 0])  # p_k rounds to 1
    target = torch.randint(0, 7, (257,), generator=gen)
    target[0] = 0
    expected = decoupled_jsd(logits_t, logits_s, target, T)[1]
    assert torch.equal(nontarget_jsd(logits_t, logits_s, target, T), expected)
    half = nontarget_jsd(logits_t.half(), logits_s.half(), target, T)
    assert torch.equal(half, decoupled_jsd(logits_t.half(), logits_s.half(), target, T)[1])


@pytest.mark.parametrize("dtypes", [(torch.float64, torch.float32), (torch.float32, torch.half)])
def test_nontarget_jsd_of_mixed_precisions_and_bad_shapes(dtypes):
    # The fused path stacks both sides; mixed precisions must still match decoupled_jsd.
    from ntdh_bench.divergence import nontarget_jsd

    gen = torch.Generator().manual_seed(1)
    logits_t = torch.randn(33, 6, generator=gen).to(dtypes[0])
    logits_s = torch.randn(33, 6, generator=gen).to(dtypes[1])
    target = torch.randint(0, 6, (33,), generator=gen)
    for T in (1.0, 2.0):
        expected = decoupled_jsd(logits_t, logits_s, target, T)[1]
        assert torch.equal(nontarget_jsd(logits_t, logits_s, target, T), expected)
    with pytest.raises(ValueError, match="target"):
        nontarget_jsd(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="student logits"):
        nontarget_jsd(torch.zeros(3, 4), torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))


@settings(max_examples=50, deadline=None)
@given(logit_pairs())
def test_the_report_gives_the_bits_of_each_divergence_alone(pair):
    # The report shares one decomposition per side; red if it swapped teacher and student,
    # or mixed up a term (e.g. the full KL for the target-class one).
    zt, zs, target, T = pair
    report = divergence_report(zt, zs, target, T)
    tckl, nckl = decoupled_kl(zt, zs, target, T)
    tcjsd, ncjsd = decoupled_jsd(zt, zs, target, T)
    alone = {"kl": kl(zt, zs, T), "tckl": tckl, "nckl": nckl, "tcjsd": tcjsd, "ncjsd": ncjsd}
    assert report.keys() == alone.keys()
    for name, value in alone.items():
        assert torch.equal(report[name], value), name
