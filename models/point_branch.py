"""A 2DPASS-style 3D point branch in plain PyTorch (paper Sec. V, Table IV; its ref. [57]).

2DPASS distils a 2D image network into a 3D network over the raw points. Its 3D network is
SPVCNN-like: sparse 3D convolutions (spconv) over voxels at several scales, with point
features pooled into voxels and scattered back. This module keeps the point/voxel structure
and drops the sparse convolutions, so that it runs wherever torch does:

* every stage is a per-point MLP (``Linear``, ``BatchNorm1d``, ReLU);
* the points are grouped into cubic voxels of side ``voxel_sizes[i]`` (metres; separately
  per scan of the batch), each voxel's features are reduced over its points with
  ``Tensor.scatter_reduce`` (``"amax"`` or ``"mean"``), and the voxel feature is scattered
  back to its points and concatenated with their own feature, then mixed by a linear layer.

Context therefore reaches only as far as one voxel of the coarsest scale (default 0.8 m),
where sparse convolutions let 2DPASS see neighbouring voxels and grow a receptive field of
metres; nor are there 2DPASS's multi-scale fusion-to-single-scale (MSFSKD) modules. It is a
light, dependency-free stand-in for experiments on the point branch, not a reproduction of
2DPASS's accuracy.

The output follows :class:`~models.base.ModelOutput` point-wise: ``logits`` ``(N, C)`` for the
``N`` points of the batch (``batch`` gives each point's scan), ``features`` the per-stage point
features ``(N, C_i)``, ``embedding`` ``(B, D)`` the per-scan mean of the last stage. It is not
in the ``MODELS`` registry, whose networks map a ``(B, ...)`` batch to ``(B, C)`` or
``(B, C, H, W)`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.base import ModelOutput

REDUCTIONS = ("amax", "mean")


def voxel_ids(coords: Tensor, voxel_size: float, batch: Tensor | None = None) -> Tensor:
    """``(N,)`` ids ``0..V-1`` of the voxel of side ``voxel_size`` holding each point
    (points of different scans never share a voxel)."""
    cells = torch.floor(coords[:, :3] / voxel_size).long()
    if batch is not None:
        cells = torch.cat([batch.long()[:, None], cells], dim=1)
    return torch.unique(cells, dim=0, return_inverse=True)[1]


def voxel_pool(features: Tensor, ids: Tensor, reduce: str = "amax") -> Tensor:
    """``(V, C)``: each voxel's features reduced over its points (``amax`` or ``mean``)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    out = features.new_zeros(int(ids.max()) + 1 if len(ids) else 0, features.shape[1])
    index = ids[:, None].expand_as(features)
    return out.scatter_reduce(0, index, features, reduce=reduce, include_self=False)


class PointVoxelStage(nn.Module):
    """Point MLP, then voxel pooling at one scale scattered back and mixed in."""

    def __init__(self, c_in: int, c_out: int, voxel_size: float, reduce: str = "amax") -> None:
        super().__init__()
        if reduce not in REDUCTIONS or voxel_size <= 0:
            raise ValueError(
                f"need reduce in {REDUCTIONS} and voxel_size > 0, got {reduce!r}, {voxel_size}"
            )
        self.point = nn.Sequential(nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), nn.ReLU())
        self.mix = nn.Sequential(nn.Linear(2 * c_out, c_out), nn.BatchNorm1d(c_out), nn.ReLU())
        self.voxel_size = voxel_size
        self.reduce = reduce

    def forward(self, features: Tensor, coords: Tensor, batch: Tensor | None) -> Tensor:
        h = self.point(features)
        ids = voxel_ids(coords, self.voxel_size, batch)
        pooled = voxel_pool(h, ids, self.reduce)[ids]
        return self.mix(torch.cat([h, pooled], dim=1))


class PointBranch(nn.Module):
    """Stages of :class:`PointVoxelStage` at growing voxel sizes, then a linear classifier.

    Input: ``(N, in_channels)`` points whose first three columns are x, y, z in metres (the
    rest, e.g. remission, are features too), and ``batch`` ``(N,)`` each point's scan.
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 19,
        widths: Sequence[int] = (32, 64, 128),
        voxel_sizes: Sequence[float] = (0.2, 0.4, 0.8),
        reduce: str = "amax",
    ) -> None:
        super().__init__()
        if in_channels < 3 or num_classes < 2 or len(widths) != len(voxel_sizes) or not widths:
            raise ValueError(
                f"PointBranch needs in_channels >= 3 (x, y, z first), num_classes >= 2 and one "
                f"voxel size per width; got {in_channels}, {num_classes}, {list(widths)}, "
                f"{list(voxel_sizes)}"
            )
        c_in = in_channels
        stages = []
        for width, size in zip(widths, voxel_sizes, strict=True):
            stages.append(PointVoxelStage(c_in, int(width), float(size), reduce))
            c_in = int(width)
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c_in, num_classes)

    @classmethod
    def from_shape(cls, input_shape: Sequence[int], num_classes: int, **kwargs) -> PointBranch:
        """Size the branch for points of ``(C,)`` features (x, y, z first)."""
        if len(input_shape) != 1:
            raise ValueError(f"point_branch takes (C,) points, got a shape {input_shape}")
        return cls(int(input_shape[0]), num_classes, **kwargs)

    def forward(self, points: Tensor, batch: Tensor | None = None) -> ModelOutput:
        coords = points[:, :3]
        h, features = points, []
        for stage in self.stages:
            h = stage(h, coords, batch)
            features.append(h)
        scans = (
            batch.long() if batch is not None else points.new_zeros(len(points), dtype=torch.long)
        )
        embedding = voxel_pool(h, scans, "mean")
        return ModelOutput(logits=self.head(h), features=features, embedding=embedding)
