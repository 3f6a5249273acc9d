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

The output of :class:`PointBranch` follows :class:`~models.base.ModelOutput` point-wise:
``logits`` ``(N, C)`` for the ``N`` points of the batch (``batch`` gives each point's scan),
``features`` the per-stage point features ``(N, C_i)``, ``embedding`` ``(B, D)`` the per-scan
mean of the last stage. :class:`PointImageBranch` wraps it for the dense contract (a point
image in, ``(B, C, H, W)`` logits out), and  registered as model ``point_branch``,
its ``from_shape`` builds the 2DPASS-style pair: the 2D network (PMF's camera stream) for the
camera image and the point network for the point image.

**How this system differs from 2DPASS** (Yan et al., ECCV 2022):

* points: only those that project into the camera image (the valid pixels of the point image,
  one point per pixel after PMF's nearest-point z-buffer); 2DPASS segments every point of the
  scan, inside and outside the camera's view, and distils only at the projected ones;
* 3D network: per-point MLPs with voxel max/mean pooling (no neighbourhood beyond a voxel)
  instead of SPVCNN's sparse convolutions (spconv);
* distillation: one logit-level KD over the projected points (the suite's distillers, e.g.
  ``kd``, over ``valid`` pixels); 2DPASS's multi-scale fusion-to-single knowledge distillation
  (MSFSKD: 2D and 3D features fused per scale, the fused prediction distilled into the 3D one)
  is absent;
* 2D branch: a frozen, separately trained teacher (PMF's camera stream here); 2DPASS trains its
  2D branch jointly with the 3D one, on image patches cropped around the points;
* no 2DPASS augmentations (instance cut-mix, its point-cloud rotation / scaling), no Lovasz
  loss, no test-time voting.

Teacher and student are therefore different classes (2D CNN and point network), a knowing
departure from the paper's Assumption 1 that 2DPASS itself makes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.base import ModelOutput
from models.pmf import PMFStream

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
    def from_shape(
        cls,
        input_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        voxel_sizes: Sequence[float] = (0.2, 0.4, 0.8),
        reduce: str = "amax",
    ) -> PointBranch:
        """Size the branch for points of ``(C,)`` features (x, y, z first)."""
        if len(input_shape) != 1:
            raise ValueError(f"PointBranch takes (C,) points, got a shape {input_shape}")
        return cls(int(input_shape[0]), num_classes, widths, voxel_sizes, reduce)

    def forward(
        self, points: Tensor, batch: Tensor | None = None, coords: Tensor | None = None
    ) -> ModelOutput:
        """``coords`` ``(N, 3)`` in metres for the voxels; default: the first three columns."""
        coords = points[:, :3] if coords is None else coords
        h, features = points, []
        for stage in self.stages:
            h = stage(h, coords, batch)
            features.append(h)
        scans = (
            batch.long() if batch is not None else points.new_zeros(len(points), dtype=torch.long)
        )
        embedding = voxel_pool(h, scans, "mean")
        return ModelOutput(logits=self.head(h), features=features, embedding=embedding)


# PMF's statistics of the point image's channels (range, x, y, z, remission), the same as
# datamodules.lidar_projection's POINT_MEAN / POINT_STD (a test checks that they agree).
POINT_MEAN = (12.12, 10.88, 0.23, -1.04, 0.21)
POINT_STD = (12.32, 11.47, 6.91, 0.86, 0.16)
POINT_IMAGE_CHANNELS = 5


class PointImageBranch(nn.Module):
    """The point branch on a point image: dense in, dense out.

    Input ``(B, 5, H, W)``: range, x, y, z, remission per pixel, standardised with
    ``point_mean`` / ``point_std``, zero where no point landed. Every pixel with a non-zero
    channel is a point: its features are the five standardised channels (x, y, z, remission,
    range), its voxel coordinates the un-standardised x, y, z in metres. The per-point logits
    go back to their pixels of a ``(B, C, H, W)`` map, zero elsewhere, so that distillation at
    the projected points is distillation over the ``valid`` pixels.

    ``features`` is empty (per-point features have no map layout; feature distillers do not
    apply); ``embedding`` ``(B, D)`` is the mean of the last stage over each scan's points
    (zero for a scan without any). Training needs at least two points per batch (BatchNorm).
    """

    def __init__(
        self,
        in_channels: int = POINT_IMAGE_CHANNELS,
        num_classes: int = 19,
        widths: Sequence[int] = (32, 64, 128),
        voxel_sizes: Sequence[float] = (0.2, 0.4, 0.8),
        reduce: str = "amax",
        point_mean: Sequence[float] = POINT_MEAN,
        point_std: Sequence[float] = POINT_STD,
    ) -> None:
        super().__init__()
        if in_channels != POINT_IMAGE_CHANNELS or len(point_mean) != 5 or len(point_std) != 5:
            raise ValueError(
                "PointImageBranch takes point images of 5 channels (range, x, y, z, remission) "
                f"with 5 means and stds; got {in_channels} channels, {list(point_mean)}, "
                f"{list(point_std)}"
            )
        self.points = PointBranch(5, num_classes, widths, voxel_sizes, reduce)
        self.register_buffer("mean", torch.tensor(point_mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(point_std, dtype=torch.float32))
        self.num_classes = num_classes

    @classmethod
    def from_shape(
        cls,
        input_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        voxel_sizes: Sequence[float] = (0.2, 0.4, 0.8),
        reduce: str = "amax",
        point_mean: Sequence[float] = POINT_MEAN,
        point_std: Sequence[float] = POINT_STD,
        image_backbone: str = "resnet34",
        decoder_width: int = 16,
        stem_stride: int = 1,
        light_widths: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.2,
    ) -> nn.Module:
        """The 2DPASS-style pair (module doc): this branch for a 5-channel point image, PMF's
        camera stream (:class:`~models.pmf.PMFStream` with ``image_backbone``,
        ``decoder_width``, ``stem_stride``, ``light_widths``, ``dropout``) for any other
        ``(C, H, W)`` input (the camera image, the 2D teacher)."""
        if len(input_shape) != 3:
            raise ValueError(f"point_branch takes (C, H, W) inputs, got a sample of {input_shape}")
        if int(input_shape[0]) == POINT_IMAGE_CHANNELS:
            return cls(
                POINT_IMAGE_CHANNELS,
                num_classes,
                widths,
                voxel_sizes,
                reduce,
                point_mean,
                point_std,
            )
        return PMFStream(
            int(input_shape[0]),
            num_classes,
            image_backbone,
            decoder_width,
            stem_stride,
            light_widths,
            dropout,
        )

    def forward(self, x: Tensor) -> ModelOutput:
        if x.dim() != 4 or x.shape[1] != POINT_IMAGE_CHANNELS:
            raise ValueError(f"point_branch takes (B, 5, H, W) point images, got {tuple(x.shape)}")
        b, _, h, w = x.shape
        valid = (x != 0).any(dim=1)
        scan = valid.nonzero()[:, 0]
        pixels = x.permute(0, 2, 3, 1)[valid]  # (N, 5): range, x, y, z, remission
        coords = (pixels * self.std + self.mean)[:, 1:4]
        feats = torch.cat([pixels[:, 1:], pixels[:, :1]], dim=1)
        dense = x.new_zeros(b, h, w, self.num_classes)
        width = self.points.head.in_features
        embedding = x.new_zeros(b, width)
        if len(pixels):
            out = self.points(feats, scan, coords)
            dense = dense.index_put((valid,), out.logits)
            last = out.features[-1]
            counts = torch.bincount(scan, minlength=b).clamp_min(1).to(last.dtype)
            embedding = embedding.index_add(0, scan, last) / counts[:, None]
        else:  # keep the graph: a zero loss with zero gradients, not a detached tensor
            dense = dense + 0 * sum(p.sum() for p in self.points.head.parameters())
        return ModelOutput(logits=dense.permute(0, 3, 1, 2), features=[], embedding=embedding)
