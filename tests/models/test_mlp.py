"""The released code's MLP and the ModelOutput contract."""

from __future__ import annotations

import pytest
import torch

from models import MODELS, ModelOutput, build_model, count_parameters
from models.mlp import MLP


def test_mlp_returns_model_output_with_features_and_embedding():
    model = build_model("mlp", (50,), 4)
    out = model(torch.randn(8, 50))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (8, 4)
    assert [f.shape for f in out.features] == [(8, 16), (8, 16)]
    assert out.embedding is out.features[-1]


def test_parameter_count_matches_the_architecture():
    # in -> 16 -> 16 -> C: (50*16 + 16) + (16*16 + 16) + (16*4 + 4)
    assert count_parameters(MLP(50, 4)) == 816 + 272 + 68
    assert count_parameters(MLP(784, 10, hidden=(1024, 256))) == (
        784 * 1024 + 1024 + 1024 * 256 + 256 + 256 * 10 + 10
    )


def test_from_shape_flattens_image_inputs():
    model = build_model("mlp", (1, 28, 28), 10, hidden=[32])
    assert model.in_features == 784
    assert model(torch.randn(2, 1, 28, 28)).logits.shape == (2, 10)


def test_model_output_index_select_and_detach():
    out = MLP(5, 3)(torch.randn(6, 5))
    picked = out.index_select(torch.tensor([4, 1])).detach()
    torch.testing.assert_close(picked.logits, out.logits[[4, 1]])
    assert not picked.logits.requires_grad and not picked.embedding.requires_grad


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        MLP(5, 1)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", (3,), 2)
    assert "mlp" in MODELS
