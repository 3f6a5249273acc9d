"""Rows of a run's cached teacher outputs, gathered only when a distiller reads them."""

from __future__ import annotations

from torch import Tensor

from models.base import ModelOutput


def same_view(a: Tensor | None, b: Tensor | None) -> bool:
    """Whether two tensors are the same view of the same memory (``detach`` keeps it)."""
    if a is None or b is None:
        return False
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


class CachedRows(ModelOutput):
    """Rows ``index`` of cached teacher outputs, each tensor gathered when first read.

    A logits-only distiller (KD, the decoupled losses) then never gathers the hidden features
    and embedding, which on the synthetic MLP cost more than the logits; an embedding that is
    the last feature map (every MLP) is gathered once. The rows are exactly
    ``source.index_select(index)``.
    """

    def __init__(self, source: ModelOutput, index: Tensor, embedding_is_last: bool) -> None:
        self._source, self._index, self._embedding_is_last = source, index, embedding_is_last
        self._rows: dict[str, Tensor | list[Tensor] | None] = {}

    def _gather(self, source: Tensor) -> Tensor:
        # index_select, not source[index]: the same rows, without advanced indexing's dispatch
        # (about 10 us a tensor, every training step)
        return source.index_select(0, self._index)

    @property
    def logits(self) -> Tensor:
        if "logits" not in self._rows:
            self._rows["logits"] = self._gather(self._source.logits)
        return self._rows["logits"]

    @property
    def features(self) -> list[Tensor]:
        if "features" not in self._rows:
            self._rows["features"] = [self._gather(f) for f in self._source.features]
        return self._rows["features"]

    @property
    def embedding(self) -> Tensor | None:
        if "embedding" not in self._rows:
            source = self._source.embedding
            if source is None:
                rows = None
            elif self._embedding_is_last:
                rows = self.features[-1]
            else:
                rows = self._gather(source)
            self._rows["embedding"] = rows
        return self._rows["embedding"]
