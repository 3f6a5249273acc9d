"""The light SSC network: size (Table I: 0.17M), output layout, gradients, and the projection
of pixel features into the voxels their index names."""

from __future__ import annotations

import pytest
import torch

from models import MODELS, build_model, count_parameters
from models.ssc import SSCNet, project_to_grid

GRID, SCALE, IMAGE = (5, 3, 4), 2, (6, 8)  # (x, y, z), hr (10, 6, 8)


def _input(channels: int, gen: torch.Generator) -> torch.Tensor:
    n_hr = 10 * 6 * 8
    image = torch.randn(2, channels, *IMAGE, generator=gen)
    position = torch.randint(-1, n_hr, (2, 1, *IMAGE), generator=gen).float()
    return torch.cat([image, position], dim=1)


@pytest.mark.parametrize(
    ("shape", "expected"), [((4, 480, 640), 168_556), ((2, 480, 640), 168_524)]
)
def test_default_size_is_table_one_s_0_17m(shape, expected):
    model = build_model("ssc", shape, 12)
    assert MODELS["ssc"] is SSCNet
    assert count_parameters(model) == expected
    assert 0.16e6 < count_parameters(model) < 0.18e6


def test_logits_are_at_the_target_grid_in_d_h_w_order_and_backprop_reaches_every_weight():
    gen = torch.Generator().manual_seed(0)
    model = SSCNet.from_shape((4, *IMAGE), 12, grid=GRID, scale=SCALE)
    out = model(_input(3, gen))
    assert out.logits.shape == (2, 12, 4, 3, 5)  # (B, C, D=z, H=y, W=x)
    assert out.embedding.shape == (2, 64, 4, 3, 5) and len(out.features) == 7
    out.logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_projection_puts_each_pixel_feature_in_the_voxel_its_index_names():
    features = torch.arange(1.0, 7.0).view(1, 1, 2, 3).repeat(1, 2, 1, 1)
    features[:, 1] *= -1  # channel 1: the max of negatives picks the smaller magnitude
    hy, hz = 6, 8  # the hr grid is (10, 6, 8)

    def flat(x: int, y: int, z: int) -> int:
        return (x * hy + y) * hz + z

    position = torch.tensor(
        [[flat(9, 5, 7), flat(0, 0, 1), -1], [flat(3, 2, 5), flat(2, 3, 4), 10 * 6 * 8]]
    ).view(1, 2, 3)
    out = project_to_grid(features, position, GRID, SCALE)
    assert out.shape == (1, 2, 4, 3, 5)
    assert out[0, 0, 3, 2, 4] == 1  # pixel (0, 0): hr (9, 5, 7) -> lr (4, 2, 3) at [z, y, x]
    assert out[0, 0, 0, 0, 0] == 2  # pixel (0, 1)
    # pixels (1, 0) and (1, 1): hr (3, 2, 5) and (2, 3, 4) share lr (1, 1, 2): max-pooled
    assert out[0, 0, 2, 1, 1] == 5 and out[0, 1, 2, 1, 1] == -4
    # pixel (0, 2) has no voxel, pixel (1, 2) an index past the grid: both dropped
    assert (out[0, 0] != 0).sum() == 3 and out.sum() == (1 + 2 + 5) - (1 + 2 + 4)


def test_volume_input_skips_the_projection():
    model = build_model("ssc", (1, 4, 3, 5), 12, grid=GRID, scale=SCALE)
    assert model.encoder2d is None
    out = model(torch.randn(2, 1, 4, 3, 5))
    assert out.logits.shape == (2, 12, 4, 3, 5)
    with pytest.raises(ValueError, match="volume input must be"):
        build_model("ssc", (1, 5, 3, 4), 12, grid=GRID, scale=SCALE)


def test_an_image_without_its_index_channel_is_rejected():
    with pytest.raises(ValueError, match="voxel-index channel"):
        build_model("ssc", (1, 6, 8), 12)
