"""A light DDRNet / AICNet-style network for semantic scene completion (paper Sec. IV-B, ref.
[55]; Table I: 0.17M parameters).

The paper uses AICNet (Li et al., CVPR 2020) with its RGB-depth fusion removed, i.e. one stream
per modality; this is such a stream, made light (168,556 parameters for RGB, 168,524 for depth
with the defaults; Table I: 0.17M):

1. a 2D encoder on the image: a 1x1 convolution to ``width2d`` channels and two
   dimension-decomposed residual bottlenecks (``1 x k`` then ``k x 1``, as DDRNet's);
2. a projection of each pixel's feature into the voxel its depth falls in: the pixel's index
   in the 240 x 144 x 240 grid (2 cm voxels) is mapped to the target's grid, 4 times coarser
   (60 x 36 x 60, 8 cm), and the features of the pixels meeting in a voxel are max-pooled
   (DDRNet and AICNet scatter-max at 2 cm and then downsample with strided 3D convolutions;
   projecting straight to 8 cm saves the 8.3M-voxel tensor, which matters on CPU and for a
   0.17M-parameter budget). Pixels without a voxel (index < 0) are dropped; voxels no pixel
   reaches stay 0;
3. a 3x3x3 stem and ``len(dilations)`` dimension-decomposed 3D residual bottlenecks
   (``1x1xk``, ``1xkx1``, ``kx1x1``, each with its dilation, DDRNet's ``BottleneckDDR3d``
   idea);
4. a head of 1x1x1 convolutions on the concatenated stem and block outputs (AICNet's
   multi-level concatenation) to ``num_classes`` logits ``(B, C, D, H, W) = (B, 12, 60, 36,
   60)``, the layout of :mod:`datamodules.nyu_ssc`'s ``y``.

**Input.** One tensor, so that ``model(batch["xb"])`` works as for every model of the suite:
``(B, C + 1, H, W)``, the image's ``C`` channels (3 RGB, 1 depth) followed by the voxel-index
channel that :mod:`datamodules.nyu_ssc` packs (float, -1 for none). A volume input
``(B, C, D, H, W)`` (the TSDF, ``student_input="tsdf"``) skips steps 1-2: the stem reads it
directly. ``from_shape`` tells the two apart by the sample's rank.

``features`` are the stem's and each block's ``(B, width3d, D, H, W)`` maps; ``embedding`` the
last block's map (distillers that need a vector average it over the voxels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.base import ModelOutput

GRID = (60, 36, 60)  # the target's (x, y, z) = (W, H, D) grid, as in datamodules.nyu_ssc
SCALE = 4  # the position index addresses the grid 4 times finer (240 x 144 x 240)


class DecomposedBottleneck2d(nn.Module):
    """1x1 reduce, ``1 x k`` then ``k x 1`` (DDRNet's 2D dimension decomposition), 1x1 expand,
    residual: a ``k x k`` receptive field for ``2k`` instead of ``k^2`` weights per pair."""

    def __init__(self, channels: int, inner: int, k: int = 3) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, inner, 1, bias=False)
        self.rows = nn.Conv2d(inner, inner, (1, k), padding=(0, k // 2))
        self.cols = nn.Conv2d(inner, inner, (k, 1), padding=(k // 2, 0))
        self.expand = nn.Conv2d(inner, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.reduce(x).relu()
        y = self.rows(y).relu()
        y = self.cols(y).relu()
        return (self.expand(y) + x).relu()


class DecomposedBottleneck3d(nn.Module):
    """1x1x1 reduce, ``1x1xk``, ``1xkx1``, ``kx1x1`` (dilated, with DDRNet's inner skips),
    1x1x1 expand, residual."""

    def __init__(self, channels: int, inner: int, k: int = 3, dilation: int = 1) -> None:
        super().__init__()
        pad = k // 2 * dilation
        self.reduce = nn.Conv3d(channels, inner, 1, bias=False)
        self.axes = nn.ModuleList(
            nn.Conv3d(
                inner,
                inner,
                tuple(k if a == axis else 1 for a in range(3)),
                padding=tuple(pad if a == axis else 0 for a in range(3)),
                dilation=tuple(dilation if a == axis else 1 for a in range(3)),
            )
            for axis in (2, 1, 0)
        )
        self.expand = nn.Conv3d(inner, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.reduce(x).relu()
        skip = torch.zeros_like(y)
        for conv in self.axes:
            y = (conv(y) + skip).relu()
            skip = skip + y
        return (self.expand(y) + x).relu()


def project_to_grid(
    features: Tensor, position: Tensor, grid: Sequence[int], scale: int = SCALE
) -> Tensor:
    """Max-pool pixel features ``(B, C, H, W)`` into the voxels ``(B, C, D, H', W')`` they name.

    ``position`` ``(B, H, W)`` holds each pixel's C-order flat index in the ``(x, y, z)`` grid
    ``grid * scale``; the voxel ``(x // scale, y // scale, z // scale)`` of ``grid`` receives it,
    stored at ``[z, y, x]``. Indices outside ``[0, prod(grid) * scale^3)`` (-1: no voxel) are
    dropped. Voxels that no pixel reaches are 0.
    """
    gx, gy, gz = (int(g) for g in grid)
    hx, hy, hz = gx * scale, gy * scale, gz * scale
    b, c = features.shape[:2]
    p = position.reshape(b, -1).long()
    inside = (p >= 0) & (p < hx * hy * hz)
    p = p.clamp(0, hx * hy * hz - 1)
    x, y, z = p // (hy * hz), (p // hz) % hy, p % hz
    n = gx * gy * gz
    target = (z // scale * gy + y // scale) * gx + x // scale
    target = torch.where(inside, target, torch.full_like(target, n))  # n: a bin thrown away
    out = features.new_zeros(b, c, n + 1)
    out = out.scatter_reduce(
        2,
        target.unsqueeze(1).expand(-1, c, -1),
        features.reshape(b, c, -1),
        "amax",
        include_self=False,
    )
    return out[..., :n].reshape(b, c, gz, gy, gx)


class SSCNet(nn.Module):
    """2D encoder, projection to the voxel grid, light 3D bottlenecks, 1x1x1 head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 12,
        volume_input: bool = False,
        grid: Sequence[int] = GRID,
        scale: int = SCALE,
        width2d: int = 16,
        width3d: int = 64,
        inner3d: int = 32,
        dilations: Sequence[int] = (1, 2, 3, 1, 2, 3),
        head: int = 128,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or len(grid) != 3 or scale < 1:
            raise ValueError(
                f"SSCNet needs in_channels >= 1, num_classes >= 2, a 3-d grid and scale >= 1; "
                f"got {in_channels}, {num_classes}, {tuple(grid)}, {scale}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.volume_input = volume_input
        self.grid = tuple(int(g) for g in grid)
        self.scale = int(scale)
        if volume_input:
            self.encoder2d = None
            stem_in = in_channels
        else:
            self.encoder2d = nn.Sequential(
                nn.Conv2d(in_channels, width2d, 1),
                nn.ReLU(),
                DecomposedBottleneck2d(width2d, width2d // 2),
                DecomposedBottleneck2d(width2d, width2d // 2),
            )
            stem_in = width2d
        self.stem = nn.Sequential(nn.Conv3d(stem_in, width3d, 3, padding=1), nn.ReLU())
        self.blocks = nn.ModuleList(
            DecomposedBottleneck3d(width3d, inner3d, dilation=d) for d in dilations
        )
        levels = width3d * (len(dilations) + 1)
        self.head = nn.Sequential(
            nn.Conv3d(levels, head, 1), nn.ReLU(), nn.Conv3d(head, num_classes, 1)
        )

    @classmethod
    def from_shape(
        cls,
        input_shape: Sequence[int],
        num_classes: int = 12,
        grid: Sequence[int] = GRID,
        scale: int = SCALE,
        width2d: int = 16,
        width3d: int = 64,
        inner3d: int = 32,
        dilations: Sequence[int] = (1, 2, 3, 1, 2, 3),
        head: int = 128,
    ) -> SSCNet:
        """``(C + 1, H, W)``: an image with its voxel-index channel; ``(C, D, H, W)``: a volume
        on the target's grid, checked against ``grid``. The options are the constructor's (each
        named here, so that run configs can check them)."""
        options = dict(
            grid=grid,
            scale=scale,
            width2d=width2d,
            width3d=width3d,
            inner3d=inner3d,
            dilations=dilations,
            head=head,
        )
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 3:
            if shape[0] < 2:
                raise ValueError(
                    f"ssc: an image input needs its channels plus the voxel-index channel, got "
                    f"a sample of shape {shape}"
                )
            return cls(shape[0] - 1, num_classes, **options)
        if len(shape) == 4:
            model = cls(shape[0], num_classes, volume_input=True, **options)
            expected = model.grid[::-1]
            if shape[1:] != expected:
                raise ValueError(f"ssc: a volume input must be (C, *{expected}), got {shape}")
            return model
        raise ValueError(f"ssc takes (C + 1, H, W) images or (C, D, H, W) volumes, got {shape}")

    def voxels(self, x: Tensor) -> Tensor:
        """The input as a ``(B, C, D, H, W)`` map on the target's grid."""
        if self.volume_input:
            return x
        image, position = x[:, :-1], x[:, -1].round().long()
        return project_to_grid(self.encoder2d(image), position, self.grid, self.scale)

    def forward(self, x: Tensor) -> ModelOutput:
        h = self.stem(self.voxels(x))
        features = [h]
        for block in self.blocks:
            h = block(h)
            features.append(h)
        logits = self.head(torch.cat(features, dim=1))
        return ModelOutput(logits=logits, features=features, embedding=h)


def grid_size(grid: Sequence[int] = GRID) -> int:
    """Number of voxels of the target's grid (129,600 for 60 x 36 x 60)."""
    return math.prod(grid)
