"""Perspective projection of a lidar scan into a camera image, as PMF does it (paper ref. [42]).

A point ``p = (x, y, z)`` in the lidar frame goes to ``(U, V, D) = M @ [x, y, z, 1]`` with
``M = P2 @ Tr`` (:func:`datamodules.semantic_kitti_files.lidar_to_image`); its pixel is
``(col, row) = (floor(U / D), floor(V / D))``. A point is kept when it is in front of the
camera (``D > 0``) and its pixel inside the ``H x W`` image. PMF keeps ``x > 0`` in the lidar
frame instead of ``D > 0``; on SemanticKITTI both keep the same points (16,850 of scan 07/000964
in a 1226 x 370 image).

**Z-buffer.** Where several points fall on one pixel, the *nearest* (smallest ``D``; on a tie,
the lowest point index) is the pixel's point. PMF writes all points with one numpy fancy
assignment, so an arbitrary one (in practice the last in file order) wins, and a far point
seen through a gap can hide the near surface. Occluded points keep their pixel in
:class:`ScanProjection`, so point-wise predictions read the pixel they fall on.

**Point image.** Five channels per pixel, PMF's: ``range = |p|`` (lidar frame), ``x``, ``y``,
``z`` and remission of the pixel's point; zero where no point. :data:`POINT_MEAN` and
:data:`POINT_STD` are the per-channel statistics of PMF's released SemanticKITTI config
(``tasks/pmf/config_server_kitti.yaml``, ``sensor.img_mean`` / ``img_stds``: statistics of the
points in the camera's field of view). As a check, scan 07/000964 gives means (13.6, 12.8,
1.0, -0.7, 0.27) and standard deviations (9.4, 9.4, 4.4, 0.8, 0.17) on its in-image points.

Vectorised: a float32 pass over all points (one NumPy matrix product) keeps the candidates
near the image, float64 decides their pixels, and the z-buffer is two scatter-mins over the
pixels hit; nothing of size ``H x W`` is allocated but the outputs.
``benchmarks/kitti_projection.py`` times it against a plain NumPy version (``lexsort``
z-buffer) on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

POINT_CHANNELS = ("range", "x", "y", "z", "remission")
POINT_MEAN = (12.12, 10.88, 0.23, -1.04, 0.21)
POINT_STD = (12.32, 11.47, 6.91, 0.86, 0.16)


@dataclass
class ScanProjection:
    """Where the points of one scan land in an ``H x W`` image.

    Attributes:
        shape: ``(H, W)``.
        indices: ``(M,)`` the points inside the image (in front of the camera), ascending.
        rows, cols: ``(M,)`` their pixel.
        depth: ``(M,)`` their camera depth ``D``.
        hit_pixels: ``(K,)`` the pixels that show a point, as flat indices ``row * W + col``,
            ascending.
        hit_points: ``(K,)`` the point each of them shows (the nearest one).
    """

    shape: tuple[int, int]
    indices: Tensor
    rows: Tensor
    cols: Tensor
    depth: Tensor
    hit_pixels: Tensor
    hit_points: Tensor

    @property
    def valid(self) -> Tensor:
        """``(H, W)`` bool: pixels that show a point."""
        out = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.bool)
        return out.index_fill_(0, self.hit_pixels, True).view(self.shape)


def project_scan(
    points: np.ndarray | Tensor, matrix: np.ndarray | Tensor, height: int, width: int
) -> ScanProjection:
    """Project ``points`` ``(N, >=3)`` (lidar frame) with the ``3x4`` ``matrix`` (module doc).

    A float32 pass over all points keeps the candidates: in front of the camera or nearly so,
    and inside the image grown by a pixel (a margin far above float32's rounding). Only they
    are projected again in float64, which decides every pixel exactly as a float64 reference
    does.
    """
    p = torch.as_tensor(points)
    m = torch.as_tensor(matrix, dtype=torch.float64)
    # float32 pass in NumPy as (3, N) rows: contiguous rows make the elementwise tests about
    # three times faster than on the columns of an (N, 3) array, and NumPy's product of an
    # (N, 3) by a (3, 3) is three times faster than torch's
    m32 = m.float().numpy()
    u32, v32, d32 = m32[:, :3] @ p[:, :3].float().numpy().T + m32[:, 3:]  # U, V, D
    near = np.abs(d32) + 1  # |D| + 1: the margin, and no sign test on a tiny D
    candidate = d32 > -0.01
    candidate &= (u32 > -near) & (v32 > -near)
    candidate &= (u32 < width * d32 + near) & (v32 < height * d32 + near)
    front = torch.from_numpy(np.flatnonzero(candidate))
    xyz = p[front, :3].to(torch.float64)
    depth = xyz @ m[2, :3] + m[2, 3]
    uv = torch.addmm(m[:2, 3], xyz, m[:2, :3].T) / depth[:, None]
    u, v = uv.unbind(1)
    keep = (depth > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    keep = torch.nonzero(keep).squeeze(1)
    indices = front[keep]
    cols, rows = u[keep].long(), v[keep].long()  # truncation = floor: both are >= 0
    depth = depth[keep]
    # z-buffer over the hit pixels: the nearest depth, then the lowest index at that depth
    pixels, slot = torch.unique(rows * width + cols, return_inverse=True)
    nearest = torch.full((len(pixels),), torch.inf, dtype=torch.float64)
    nearest.scatter_reduce_(0, slot, depth, reduce="amin")
    closest = depth == nearest[slot]
    shown = torch.full((len(pixels),), len(points), dtype=torch.long)
    shown.scatter_reduce_(0, slot[closest], indices[closest], reduce="amin")
    return ScanProjection((height, width), indices, rows, cols, depth, pixels, shown)


def _zeros(shape: tuple[int, ...], dtype: type) -> Tensor:
    """A zero tensor from NumPy's allocator: it takes large zeroed blocks straight from the
    kernel (calloc), where ``torch.zeros`` writes every page; twice as fast for an image."""
    return torch.from_numpy(np.zeros(shape, dtype=dtype))


def point_features(points: np.ndarray | Tensor) -> Tensor:
    """``(N, 5)`` float32 per point: range, x, y, z, remission (:data:`POINT_CHANNELS`)."""
    p = torch.as_tensor(points, dtype=torch.float32)
    return torch.cat([p[:, :3].norm(dim=1, keepdim=True), p[:, :4]], dim=1)


def point_image(points: np.ndarray | Tensor, projection: ScanProjection) -> Tensor:
    """``(5, H, W)`` float32: each pixel's point's :func:`point_features`, zero where none."""
    shape = projection.shape
    out = _zeros((len(POINT_CHANNELS), shape[0] * shape[1]), np.float32)
    features = point_features(torch.as_tensor(points)[projection.hit_points])
    return out.index_copy_(1, projection.hit_pixels, features.T).view(-1, *shape)


def label_image(
    labels: np.ndarray | Tensor, projection: ScanProjection, ignore: int = 255
) -> Tensor:
    """``(H, W)`` int64: each pixel's point's label, ``ignore`` where no point."""
    shape = projection.shape
    out = torch.full((shape[0] * shape[1],), ignore, dtype=torch.long)
    shown = torch.as_tensor(labels, dtype=torch.long)[projection.hit_points]
    return out.index_copy_(0, projection.hit_pixels, shown).view(shape)


def normalize_point_image(image: Tensor, valid: Tensor) -> Tensor:
    """``(image - POINT_MEAN) / POINT_STD`` per channel where ``valid``, zero elsewhere."""
    mean = torch.tensor(POINT_MEAN, dtype=image.dtype).view(-1, 1, 1)
    std = torch.tensor(POINT_STD, dtype=image.dtype).view(-1, 1, 1)
    return ((image - mean) / std) * valid.to(image.dtype)
