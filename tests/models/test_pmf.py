"""PMF's stream without fusion: Table I's capacity, full-resolution outputs, both modalities."""

from __future__ import annotations

import pytest
import torch

from models import MODELS, ModelOutput, build_model, count_parameters
from models.pmf import PMFLight, PMFStream


def test_resnet34_stream_has_table_1_capacity():
    camera = build_model("pmf", (3, 384, 1248), 19)
    lidar = build_model("pmf", (5, 384, 1248), 19)
    assert count_parameters(camera) == 21_422_531
    assert count_parameters(lidar) == 21_422_531 + 64 * 2 * 7 * 7  # two more input channels
    assert round(count_parameters(camera) / 1e6, 2) == 21.42  # Table I, SemanticKITTI
    assert type(camera) is type(lidar) is PMFStream and camera.output_stride == 16
    assert camera.stem[0].weight.shape == (64, 3, 7, 7) and lidar.stem[0].in_channels == 5


def test_resnet34_stream_returns_full_resolution_logits():
    model = build_model("pmf", (5, 32, 64), 19).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 5, 32, 64))
    assert out.logits.shape == (1, 19, 32, 64) and out.embedding.shape == (1, 512)


@pytest.mark.parametrize("size", [(32, 64), (40, 96), (37, 50)])
def test_light_stream_outputs_match_across_modalities(size):
    torch.manual_seed(0)
    camera = build_model("pmf_light", (3, *size), 19)
    lidar = build_model("pmf_light", (5, *size), 19)
    out_a, out_b = camera(torch.randn(2, 3, *size)), lidar(torch.randn(2, 5, *size))
    assert isinstance(out_a, ModelOutput) and out_a.logits.shape == (2, 19, *size)
    assert [f.shape for f in out_a.features] == [f.shape for f in out_b.features]
    assert out_a.features[-1].shape == (2, 16, *size)  # the last decoder map: full size
    assert out_a.embedding.shape == out_b.embedding.shape == (2, 128)
    assert count_parameters(camera) < 500_000 and type(camera) is PMFLight


def test_light_stream_trains_every_parameter_on_cpu():
    torch.manual_seed(0)
    model = build_model("pmf_light", (5, 32, 64), 4, decoder_width=8, dropout=0.0)
    x = torch.randn(2, 5, 32, 64)
    y = torch.randint(0, 4, (2, 32, 64))
    y[:, :8] = 255
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.logits, y, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it learns the fixed batch


def test_logits_depend_on_the_local_input():
    """Full resolution means a pixel's logits change when the input there changes."""
    torch.manual_seed(0)
    model = build_model("pmf_light", (3, 32, 64), 5, stem_stride=2).eval()
    x = torch.randn(1, 3, 32, 64)
    x2 = x.clone()
    x2[..., 10, 40] += 5.0
    with torch.no_grad():
        diff = (model(x).logits - model(x2).logits).abs().sum(1)[0]
    assert model.output_stride == 32
    assert diff[10, 40] > diff[10, 5] and diff[10, 40] > diff[30, 40]


def test_registry_and_arguments():
    assert MODELS["pmf"] is PMFStream and MODELS["pmf_light"] is PMFLight
    with pytest.raises(ValueError, match="backbone"):
        build_model("pmf", (3, 32, 32), 19, backbone="vgg")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("pmf_light", (3, 32), 19)
    with pytest.raises(ValueError, match="light_widths"):
        build_model("pmf_light", (3, 32, 32), 19, light_widths=(8, 16))
