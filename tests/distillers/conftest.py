"""Shared builders for the distiller tests: model outputs from plain tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor

from models.base import ModelOutput


def _output(
    logits: Tensor | None = None,
    features: Sequence[Tensor] = (),
    embedding: Tensor | None = None,
) -> ModelOutput:
    if logits is None:
        batch = (embedding if embedding is not None else features[-1]).shape[0]
        logits = torch.zeros(batch, 3)
    return ModelOutput(logits=logits, features=list(features), embedding=embedding)


@pytest.fixture
def make_output() -> Callable[..., ModelOutput]:
    """``make_output(logits=None, features=(), embedding=None)`` -> ModelOutput."""
    return _output
