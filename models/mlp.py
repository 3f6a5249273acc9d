"""Fully connected networks of the authors' released code."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from torch import Tensor, nn

from models.base import ModelOutput


class MLP(nn.Module):
    """``in -> hidden[0] -> ... -> hidden[-1] -> C`` with ReLU between layers.

    The synthetic experiments use two hidden layers of 16 (``in -> 16 -> 16 -> C``), the
    released code's network for the scikit-learn data. Every hidden activation is returned in
    ``features`` and the last one is the ``embedding``.
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (16, 16)
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2 or any(h < 1 for h in hidden):
            raise ValueError(
                f"MLP needs in_features >= 1, num_classes >= 2 and positive widths; got "
                f"in_features={in_features}, num_classes={num_classes}, hidden={list(hidden)}"
            )
        widths = [in_features, *hidden]
        self.hidden = nn.ModuleList(
            nn.Linear(w_in, w_out) for w_in, w_out in itertools.pairwise(widths)
        )
        self.head = nn.Linear(widths[-1], num_classes)
        self.in_features = in_features
        self.num_classes = num_classes

    @classmethod
    def from_shape(
        cls, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (16, 16)
    ) -> MLP:
        """Size the network for inputs of ``input_shape`` (flattened)."""
        return cls(math.prod(input_shape), num_classes, hidden)

    def forward(self, x: Tensor) -> ModelOutput:
        h = x.flatten(1)
        features = []
        for layer in self.hidden:
            h = layer(h).relu()
            features.append(h)
        return ModelOutput(logits=self.head(h), features=features, embedding=h)
