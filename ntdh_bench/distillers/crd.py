"""Tian et al., "Contrastive Representation Distillation" (ICLR 2020)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ModelOutput
from ntdh_bench.distillers.base import (
    Distiller,
    pooled_embedding,
    sample_weight,
    weighted_mean,
)
from ntdh_bench.distillers.registry import register_distiller

NEGATIVE_MODES = ("class", "uniform")


@register_distiller("crd")
class CRD(Distiller):
    """``L = weight * mean_n (NCE_n(v_s; M_t) + NCE_n(v_t; M_s))``, the NCE bound of CRD (Eq. 18).

    Embeddings: ``v_s = normalize(W_s e_s + b_s)`` and ``v_t = normalize(W_t e_t + b_t)``,
    ``dim``-wide linear heads on the penultimate embeddings (pooled on dense tasks), trained
    with the student. Memory: two banks ``M_s``, ``M_t`` of shape ``(N, dim)`` over the training
    set, addressed by the batch's ``index``; after each training step row ``i`` becomes
    ``normalize(momentum * M[i] + (1 - momentum) * v_i)`` (initialised uniform in
    ``+-1 / sqrt(dim / 3)``, as in the reference).

    For sample ``n`` with ``K = num_negatives`` negatives ``j_1 .. j_K`` and ``j_0 = index_n``,
    ``P_nj = exp(<M_t[j], v_s,n> / T) / Z_s``, where ``Z_s = N * mean(exp(<M, v> / T))`` is
    estimated once on the first batch and then fixed (rank 0's estimate under DDP). With the
    noise mass ``K * P_noise = K / N``::

        NCE_n = -log(P_n0 / (P_n0 + K / N)) - sum_{j >= 1} log((K / N) / (P_nj + K / N))

    and symmetrically with the teacher embedding against the student bank. With
    ``a_nj = log P_nj - log(K / N)`` this is the logistic loss
    ``NCE_n = softplus(-a_n0) + sum_{j >= 1} softplus(a_nj)``, which is how it is computed: in
    log space (the reference adds ``eps = 1e-7`` inside its logarithms instead) and in float32
    with autocast disabled, so mixed precision cannot overflow ``exp(1 / T)``. Reduction: summed
    over negatives, averaged over samples (PyTorch's sum / batch size in the reference); with
    ``distill_weight`` a weighted mean over samples (dense: per sample, see
    :func:`sample_weight`). Every sample's embedding still updates the banks: the weight
    applies to the loss only.

    Negatives (``negatives``): ``"class"`` draws them from training samples of other classes
    (the reference's ``mode="exact"``; needs the training labels, so classification only),
    without replacement unless some class has fewer than ``K`` samples outside it, in which
    case all negatives are drawn with replacement (as the reference does, e.g. for a small
    dataset such as the synthetic one with ``K = 16384``). ``"uniform"`` draws them uniformly
    from the whole training set with replacement (the reference's alias sampler).

    Under DDP every rank's bank receives every rank's updates: indices and embeddings are
    all-gathered before writing, and an index that appears twice takes its first occurrence,
    so the banks stay identical on all ranks. The banks are buffers, saved in checkpoints.
    Defaults: ``dim = 128``, ``K = 16384``, ``T = 0.07``, ``momentum = 0.5``, weight 0.8.
    """

    supported_tasks = ("classification", "dense")

    def __init__(
        self,
        weight: float = 0.8,
        dim: int = 128,
        num_negatives: int = 16384,
        T: float = 0.07,
        momentum: float = 0.5,
        negatives: str = "class",
        task: str = "classification",
    ) -> None:
        super().__init__(task)
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"crd: negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
        if negatives == "class" and task != "classification":
            raise ValueError(
                f"crd: negatives='class' needs one label per sample, which {task!r} tasks do "
                "not have; use negatives='uniform'"
            )
        if dim < 1 or num_negatives < 1:
            raise ValueError(f"crd: dim and num_negatives must be >= 1, got {dim}, {num_negatives}")
        if T <= 0:
            raise ValueError(f"crd: temperature must be positive, got T = {T}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"crd: momentum must lie in [0, 1), got {momentum}")
        self.weight = weight
        self.dim = dim
        self.num_negatives = num_negatives
        self.T = T
        self.momentum = momentum
        self.negatives = negatives
        self.replacement = True
        self.embed_s: nn.Linear | None = None
        self.embed_t: nn.Linear | None = None

    # --- binding -----------------------------------------------------------------------
    def bind(
        self,
        student: ModelOutput,
        teacher: ModelOutput,
        num_train_samples: int,
        train_labels: Tensor | None = None,
    ) -> None:
        """Create the heads and the two memory banks (kept when already bound)."""
        if self.embed_s is not None:
            return
        if num_train_samples < 2:
            raise ValueError(f"crd needs at least 2 training samples, got {num_train_samples}")
        self.embed_s = nn.Linear(pooled_embedding(student, "crd").shape[1], self.dim)
        self.embed_t = nn.Linear(pooled_embedding(teacher, "crd").shape[1], self.dim)
        bound = 1.0 / math.sqrt(self.dim / 3)
        for name in ("memory_s", "memory_t"):
            bank = torch.empty(num_train_samples, self.dim).uniform_(-bound, bound)
            self.register_buffer(name, bank)
        self.register_buffer("log_z", torch.full((2,), math.nan))
        if self.negatives == "class":
            self._bind_classes(num_train_samples, train_labels)

    def _bind_classes(self, n: int, labels: Tensor | None) -> None:
        if labels is None or labels.shape != (n,):
            got = None if labels is None else tuple(labels.shape)
            raise ValueError(
                f"crd: negatives='class' needs the training labels by index, shape ({n},), "
                f"which the module reads from a datamodule that holds its training split as "
                f"tensors; got {got}. Use negatives='uniform' for file-backed datamodules"
            )
        labels = labels.detach().long().cpu().clone()
        counts = torch.bincount(labels)
        outside = n - counts[counts > 0]
        if int(outside.min()) < 1:
            raise ValueError("crd: every training sample has the same class; no negatives exist")
        self.replacement = self.num_negatives > int(outside.min())
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("by_class", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)

    # --- the loss ----------------------------------------------------------------------
    def sample_negatives(self, y: Tensor) -> Tensor:
        """``(B, K)`` training-set indices of negatives for a batch with labels ``y``."""
        n, k = self.memory_s.shape[0], self.num_negatives
        device = self.memory_s.device
        if self.negatives == "uniform":
            return torch.randint(n, (len(y), k), device=device)
        y = y.to(device)
        if self.replacement:
            start = self.class_start[y].unsqueeze(1)
            count = self.class_count[y].unsqueeze(1)
            r = torch.rand(len(y), k, device=device).mul_(n - count).long()
            r = torch.minimum(r, n - count - 1, out=r)
            return self.by_class[r.add_(count * (r >= start))]
        keys = torch.rand(len(y), n, device=device)
        keys.masked_fill_(self.labels.unsqueeze(0) == y.unsqueeze(1), 2.0)
        return keys.topk(k, dim=1, largest=False).indices

    def forward(
        self, student: ModelOutput, teacher: ModelOutput, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        if self.embed_s is None or self.embed_t is None:
            raise RuntimeError(
                "crd is not bound: CrossModalKD creates its heads and memory in setup() from "
                "the trainer's datamodule; pass datamodule= to Trainer.fit or call bind() first"
            )
        index = batch["index"].to(self.memory_s.device)
        contrast = torch.cat([index.unsqueeze(1), self.sample_negatives(batch["y"])], dim=1)
        with torch.autocast(device_type=index.device.type, enabled=False):
            v_s = F.normalize(self.embed_s(pooled_embedding(student, "crd").float()), dim=1)
            v_t = F.normalize(self.embed_t(pooled_embedding(teacher, "crd").float()), dim=1)
            scores_s = _scores(self.memory_t, v_s / self.T, contrast)
            scores_t = _scores(self.memory_s, v_t / self.T, contrast)
            if torch.isnan(self.log_z).any():
                self._set_log_z(scores_s, scores_t)
            loss = self._nce(scores_s, self.log_z[0]) + self._nce(scores_t, self.log_z[1])
        if self.training:
            self._update_memory(index, v_s.detach(), v_t.detach())
        return {"crd": self.weight * weighted_mean(loss, sample_weight(batch))}

    def _nce(self, scores: Tensor, log_z: Tensor) -> Tensor:
        """Per-sample NCE loss from ``scores = <M, v> / T`` of shape ``(B, K + 1)``, positive first.

        ``softplus(-a_0) + sum_{j >= 1} softplus(a_j) = sum_{j >= 0} softplus(a_j) - a_0``.
        """
        log_noise = math.log((scores.shape[1] - 1) / self.memory_s.shape[0])
        a = scores - (log_z + log_noise)
        return F.softplus(a).sum(dim=1) - a[:, 0]

    @torch.no_grad()
    def _set_log_z(self, scores_s: Tensor, scores_t: Tensor) -> None:
        """``log Z = log(N * mean(exp(scores)))`` from the first batch, shared from rank 0."""
        log_n = math.log(self.memory_s.shape[0])
        for i, scores in enumerate((scores_s, scores_t)):
            self.log_z[i] = torch.logsumexp(scores.flatten(), 0) - math.log(scores.numel()) + log_n
        if _distributed():
            dist.broadcast(self.log_z, src=0)

    @torch.no_grad()
    def _update_memory(self, index: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        """Momentum update of both banks with every rank's rows."""
        index, rows = _all_gather_rows(index, torch.cat([v_s, v_t], dim=1))
        index, rows = _first_occurrences(index, rows)
        for bank, rows_of_bank in zip(
            (self.memory_s, self.memory_t), rows.split(self.dim, dim=1), strict=True
        ):
            mixed = self.momentum * bank[index] + (1.0 - self.momentum) * rows_of_bank
            bank.index_copy_(0, index, F.normalize(mixed, dim=1))

    def extra_repr(self) -> str:
        return f"task={self.task!r}, dim={self.dim}, K={self.num_negatives}, {self.negatives}"


def _scores(bank: Tensor, v: Tensor, contrast: Tensor) -> Tensor:
    """``<bank[contrast[b, j]], v[b]>`` as ``(B, K + 1)``.

    When the bank has no more rows than the batch draws, one ``(B, N)`` product and a gather
    are cheaper than gathering ``B * (K + 1)`` rows; both give the same values. Either way the
    backward pass keeps a copy of the rows, as the bank is updated in place before it runs.
    """
    if bank.shape[0] <= contrast.numel():
        return (v @ bank.clone().T).gather(1, contrast)
    return torch.bmm(bank[contrast], v.unsqueeze(2)).squeeze(2)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather_rows(index: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Every rank's ``index`` and ``rows``, in rank order (batches may differ in size)."""
    if not _distributed():
        return index, rows
    world = dist.get_world_size()
    size = torch.tensor([len(index)], device=index.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    gathered = []
    for tensor in (index, rows):
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]))
    return gathered[0], gathered[1]


def _first_occurrences(index: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Drop repeated indices, keeping each one's first row, so that writes are deterministic."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(len(index), device=index.device)
    first = torch.full_like(unique, len(index)).scatter_reduce_(0, inverse, positions, "amin")
    return index[first], rows[first]
