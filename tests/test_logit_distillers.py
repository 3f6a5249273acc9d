"""`kd` and `decoupled`: values from the formulas, the exact option, weights, dense outputs."""

from __future__ import annotations

import math

import pytest
import torch

from models.base import ModelOutput
from ntdh_bench.distillers import DISTILLERS, build_distiller


def _outs(zs, zt):
    return ModelOutput(logits=zs), ModelOutput(logits=zt)


def _probs(z, T):
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


def test_kd_matches_hinton_formula_written_out():
    zs = torch.tensor([[1.0, 2.0, 0.5]])
    zt = torch.tensor([[3.0, 0.0, -1.0]])
    T = 4.0
    pt, ps = _probs(zt[0].tolist(), T), _probs(zs[0].tolist(), T)
    expected = T**2 * sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
    out = build_distiller("kd")(*_outs(zs, zt), {"y": torch.tensor([0])})
    assert out["kd"].item() == pytest.approx(expected, rel=1e-5)


def test_decoupled_matches_alpha_tckl_plus_beta_nckl_written_out():
    zs = torch.tensor([[1.0, 2.0, 0.5, -0.3]])
    zt = torch.tensor([[3.0, 0.0, -1.0, 0.7]])
    k, T, alpha, beta = 1, 2.0, 0.5, 3.0
    pt, ps = _probs(zt[0].tolist(), T), _probs(zs[0].tolist(), T)
    tckl = pt[k] * math.log(pt[k] / ps[k]) + (1 - pt[k]) * math.log((1 - pt[k]) / (1 - ps[k]))
    ht = [p / (1 - pt[k]) for i, p in enumerate(pt) if i != k]
    hs = [p / (1 - ps[k]) for i, p in enumerate(ps) if i != k]
    nckl = sum(a * math.log(a / b) for a, b in zip(ht, hs, strict=True))
    out = build_distiller("decoupled", alpha=alpha, beta=beta, T=T)(
        *_outs(zs, zt), {"y": torch.tensor([k])}
    )
    assert out["tckl"].item() == pytest.approx(alpha * T**2 * tckl, rel=1e-5)
    assert out["nckl"].item() == pytest.approx(beta * T**2 * nckl, rel=1e-5)


def test_exact_decoupled_with_unit_weights_is_hinton_kd():
    gen = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(32, 10, generator=gen) * 3, torch.randn(32, 10, generator=gen) * 3
    batch = {"y": torch.randint(0, 10, (32,), generator=gen)}
    kd = build_distiller("kd", T=3.0)(*_outs(zs, zt), batch)["kd"]
    dec = build_distiller("decoupled", T=3.0, exact=True)(*_outs(zs, zt), batch)
    torch.testing.assert_close(dec["tckl"] + dec["nckl"], kd)


def test_distill_weight_removes_masked_samples_from_the_mean():
    gen = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    y = torch.randint(0, 4, (6,), generator=gen)
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    for name in ("kd", "decoupled"):
        distiller = build_distiller(name)
        weighted = distiller(*_outs(zs, zt), {"y": y, "distill_weight": keep})
        idx = keep.bool()
        subset = distiller(*_outs(zs[idx], zt[idx]), {"y": y[idx]})
        for key in subset:
            torch.testing.assert_close(weighted[key], subset[key])
        nothing = distiller(*_outs(zs, zt), {"y": y, "distill_weight": torch.zeros(6)})
        assert all(v.item() == 0 for v in nothing.values())


def test_dense_outputs_are_distilled_per_valid_labelled_pixel():
    gen = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(2, 5, 3, 3, generator=gen), torch.randn(2, 5, 3, 3, generator=gen)
    y = torch.randint(0, 5, (2, 3, 3), generator=gen)
    y[0, 0, 0] = 255
    valid = torch.rand(2, 3, 3, generator=gen) > 0.3
    keep = valid & (y != 255)
    flat_s, flat_t = zs.permute(0, 2, 3, 1)[keep], zt.permute(0, 2, 3, 1)[keep]
    for name in ("kd", "decoupled"):
        dense = build_distiller(name, task="dense")(*_outs(zs, zt), {"y": y, "valid": valid})
        flat = build_distiller(name)(*_outs(flat_s, flat_t), {"y": y[keep]})
        for key in flat:
            torch.testing.assert_close(dense[key], flat[key])


def test_registry_builds_by_name_and_rejects_unknown_options():
    assert {"kd", "decoupled"} <= set(DISTILLERS)
    assert DISTILLERS["decoupled"].defaults() == {
        "alpha": 1.0,
        "beta": 1.0,
        "T": 4.0,
        "exact": False,
    }
    with pytest.raises(ValueError, match="no option"):
        build_distiller("kd", alpha=2.0)
    with pytest.raises(ValueError, match="unknown distiller"):
        build_distiller("mystery")
    with pytest.raises(ValueError, match="temperature"):
        build_distiller("decoupled", T=0.0)
