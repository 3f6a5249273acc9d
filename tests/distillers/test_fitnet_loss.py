"""FitNet: golden hint loss through a fixed regressor, the two-stage option, binding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntdh_bench.distillers import build_distiller


def _bound_fitnet(make_output, h_s, h_t, **overrides):
    fitnet = build_distiller("fitnet", **overrides)
    fitnet.bind(make_output(features=[h_s]), make_output(features=[h_t]), num_train_samples=10)
    return fitnet


def test_fitnet_is_weight_times_mse_of_the_regressed_hint(make_output):
    h_s = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]])
    h_t = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [-1.0, 0.5, 0.0]])
    fitnet = _bound_fitnet(make_output, h_s, h_t)
    W = np.array([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]])
    b = np.array([0.01, -0.02, 0.03])
    with torch.no_grad():
        fitnet.regressor.weight.copy_(torch.tensor(W))
        fitnet.regressor.bias.copy_(torch.tensor(b))
    expected = 100.0 * np.mean((h_s.numpy() @ W.T + b - h_t.numpy()) ** 2)
    loss = fitnet(make_output(features=[h_s]), make_output(features=[h_t]), {"y": None})
    assert loss["hint"].item() == pytest.approx(expected, rel=1e-5)


def test_fitnet_hint_layer_defaults_to_the_middle_feature(make_output):
    feats_s = [torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 7)]
    feats_t = [torch.randn(4, 2), torch.randn(4, 6), torch.randn(4, 8)]
    fitnet = build_distiller("fitnet")
    fitnet.bind(make_output(features=feats_s), make_output(features=feats_t), 10)
    assert (fitnet.regressor.in_features, fitnet.regressor.out_features) == (5, 6)


def test_fitnet_regresses_feature_maps_with_a_1x1_convolution(make_output):
    h_s, h_t = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    fitnet = _bound_fitnet(make_output, h_s, h_t)
    assert isinstance(fitnet.regressor, torch.nn.Conv2d)
    assert fitnet.regressor.kernel_size == (1, 1)
    loss = fitnet(make_output(features=[h_s]), make_output(features=[h_t]), {"y": None})["hint"]
    pooled = torch.nn.functional.adaptive_avg_pool2d(h_s, (4, 4))
    assert loss.item() == pytest.approx(
        100.0 * ((fitnet.regressor(pooled) - h_t) ** 2).mean().item(), rel=1e-5
    )


def test_fitnet_binding_is_idempotent(make_output):
    h = torch.randn(3, 4)
    fitnet = _bound_fitnet(make_output, h, h)
    regressor = fitnet.regressor
    fitnet.bind(make_output(features=[h]), make_output(features=[h]), 10)
    assert fitnet.regressor is regressor


def test_fitnet_unbound_says_how_to_bind(make_output):
    h = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="not bound"):
        build_distiller("fitnet")(make_output(features=[h]), make_output(features=[h]), {})


def test_fitnet_two_stage_uses_the_hint_then_kd(make_output):
    h_s, h_t = torch.randn(3, 4), torch.randn(3, 4)
    z_s, z_t = torch.randn(3, 5), torch.randn(3, 5)
    fitnet = _bound_fitnet(make_output, h_s, h_t, hint_epochs=2)
    student, teacher = make_output(z_s, [h_s]), make_output(z_t, [h_t])
    batch = {"y": torch.tensor([0, 1, 2])}
    fitnet.set_epoch(1)
    assert set(fitnet(student, teacher, batch)) == {"hint"}
    fitnet.set_epoch(2)
    stage2 = fitnet(student, teacher, batch)
    kd = build_distiller("kd")(student, teacher, batch)["kd"]
    assert set(stage2) == {"kd"}
    assert stage2["kd"].item() == pytest.approx(kd.item(), rel=1e-6)


def test_fitnet_honours_distill_weight(make_output):
    h_s, h_t = torch.randn(4, 3), torch.randn(4, 2)
    fitnet = _bound_fitnet(make_output, h_s, h_t)
    w = torch.tensor([1.0, 0.0, 2.0, 0.0])
    weighted = fitnet(
        make_output(features=[h_s]), make_output(features=[h_t]), {"distill_weight": w}
    )
    per_sample = ((fitnet.regressor(h_s) - h_t) ** 2).mean(dim=1)
    expected = 100.0 * (per_sample * w).sum() / w.sum()
    assert weighted["hint"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_fitnet_dense_pixel_weights_become_per_sample_means(make_output):
    h_s, h_t = torch.randn(2, 3), torch.randn(2, 3)
    fitnet = _bound_fitnet(make_output, h_s, h_t, task="dense")
    y = torch.zeros(2, 2, 2, dtype=torch.long)
    valid = torch.tensor([[[True, True], [False, False]], [[True, True], [True, True]]])
    w = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 1.0]]])
    batch = {"y": y, "valid": valid, "distill_weight": w}
    loss = fitnet(make_output(features=[h_s]), make_output(features=[h_t]), batch)["hint"]
    per_sample = ((fitnet.regressor(h_s) - h_t) ** 2).mean(dim=1)
    sample_w = torch.tensor([0.5, 0.25])  # mean weight over each sample's valid pixels
    expected = 100.0 * (per_sample * sample_w).sum() / sample_w.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fitnet_is_finite_on_extreme_features(make_output):
    h_s = torch.tensor([[1e4, -1e4], [0.0, 0.0]], requires_grad=True)
    h_t = torch.tensor([[1e4, 0.0], [-1e4, 1e4]])
    fitnet = _bound_fitnet(make_output, h_s, h_t)
    loss = fitnet(make_output(features=[h_s]), make_output(features=[h_t]), {})["hint"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(h_s.grad).all()
