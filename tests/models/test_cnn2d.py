"""The released code's 2D CNN: Table I's capacities, the output contract, kernels, masks."""

from __future__ import annotations

import pytest
import torch

from models import MODELS, ModelOutput, build_model, count_parameters
from models.cnn2d import CNN2d, kernels_for
from ntdh_bench.masking import MaskedNetwork


@pytest.mark.parametrize(
    ("shape", "kernels", "params", "table_1"),
    [
        ((1, 64, 301), (7, 5, 5), 13_236_104, 13.24),  # log-mel spectrogram: "Audio"
        ((1, 40, 256), (7, 5, 5), 13_236_104, 13.24),  # the release's audio input
        ((3, 256, 512), (3, 3, 3), 13_071_560, 13.07),  # one RGB frame: "Image"
        ((9, 128, 128), (3, 3, 3), 13_073_288, 13.07),  # three stacked frames (the default)
    ],
)
def test_parameter_counts_match_table_1(shape, kernels, params, table_1):
    model = build_model("cnn2d", shape, 8)
    assert model.kernel_sizes == kernels
    assert count_parameters(model) == params
    assert round(params / 1e6, 2) == table_1


def test_both_modalities_return_features_of_the_same_shapes():
    audio = build_model("cnn2d", (1, 32, 51), 8)
    video = build_model("cnn2d", (6, 16, 16), 8)
    out_a, out_b = audio(torch.randn(2, 1, 32, 51)), video(torch.randn(2, 6, 16, 16))
    assert isinstance(out_a, ModelOutput) and out_a.logits.shape == (2, 8)
    shapes = [(2, 128, 7, 14), (2, 1024), (2, 128)]
    assert [tuple(f.shape) for f in out_a.features] == shapes
    assert [tuple(f.shape) for f in out_b.features] == shapes
    assert out_b.embedding is out_b.features[-1]
    assert type(audio) is type(video) is CNN2d and "cnn2d" in MODELS


def test_kernel_sizes_by_input_channels():
    assert kernels_for(None, 1) == (7, 5, 5) and kernels_for(None, 9) == (3, 3, 3)
    assert kernels_for([5, 5, 3], 1) == (5, 5, 3)
    spec = {"1": [9, 7, 5], 3: [3, 3, 3], "default": [5, 3, 3]}
    assert kernels_for(spec, 1) == (9, 7, 5)
    assert kernels_for(spec, 3) == (3, 3, 3)
    assert kernels_for(spec, 6) == (5, 3, 3)
    with pytest.raises(ValueError, match="no entry for 6 input channels"):
        kernels_for({"1": [7, 5, 5]}, 6)
    with pytest.raises(ValueError, match="channel counts or 'default'"):
        kernels_for({"audio": [7, 5, 5]}, 1)
    model = build_model("cnn2d", (2, 20, 20), 4, kernel_sizes=[3, 3], channels=[8, 16])
    assert len(model.blocks) == 2 and model(torch.randn(1, 2, 20, 20)).logits.shape == (1, 4)


def test_inputs_too_small_for_the_kernels_are_rejected():
    with pytest.raises(ValueError, match="too small"):
        build_model("cnn2d", (1, 8, 40), 8)  # 8 -> 4 -> 2 -> 1 -> -1 with (7, 5, 5)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("cnn2d", (64,), 8)
    with pytest.raises(ValueError, match="one kernel size per conv block"):
        CNN2d(1, 8, kernel_sizes=(3, 3))


@pytest.mark.parametrize(("layer", "feature"), [("blocks.2", 0), ("fc.1", 2)])
def test_hidden_channels_can_be_masked_by_layer_name(layer, feature):
    model = build_model("cnn2d", (3, 16, 16), 8, hidden=(32, 16))
    channels = model(torch.zeros(1, 3, 16, 16)).features[feature].shape[1]
    keep = torch.ones(channels)
    keep[: channels // 2] = 0
    masked = MaskedNetwork(model, keep, layer)
    out = masked(torch.randn(4, 3, 16, 16))
    assert (out.features[feature][:, : channels // 2] == 0).all()
