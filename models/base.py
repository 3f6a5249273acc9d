"""The output contract every architecture in the suite honours."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """What a network returns, so that any distiller can read what it needs.

    Attributes:
        logits: ``(B, C)`` for classification or ``(B, C, *spatial)`` for dense tasks:
            ``(B, C, H, W)`` for images, ``(B, C, D, H, W)`` for voxel grids (NYU SSC), laid
            out like the batch's ``y`` ``(B, *spatial)``.
        features: intermediate activations, shallow to deep, for feature-based distillers
            (FitNet's hint, SP's last feature map) and for hidden-layer masks.
        embedding: the penultimate vector ``(B, D)`` (CRD, RKD, PKT).
    """

    logits: Tensor
    features: list[Tensor] = field(default_factory=list)
    embedding: Tensor | None = None

    def detach(self) -> ModelOutput:
        """A copy cut from the autograd graph (teacher outputs, cached outputs)."""
        return ModelOutput(
            logits=self.logits.detach(),
            features=[f.detach() for f in self.features],
            embedding=None if self.embedding is None else self.embedding.detach(),
        )

    def index_select(self, index: Tensor) -> ModelOutput:
        """Rows ``index`` of every tensor: serves a batch from cached outputs."""
        return ModelOutput(
            logits=self.logits[index],
            features=[f[index] for f in self.features],
            embedding=None if self.embedding is None else self.embedding[index],
        )
