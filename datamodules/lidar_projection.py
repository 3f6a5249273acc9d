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

The projection runs in torch on the CPU, one scatter-min for the z-buffer and no sort;
``benchmarks/kitti_projection.py`` times it against a plain NumPy (``lexsort``) version.
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
        indices: ``(M,)`` the points inside the image (in front of the camera), ascending.
        rows, cols: ``(M,)`` their pixel.
        depth: ``(M,)`` their camera depth ``D``.
        point_index: ``(H, W)`` the point each pixel shows (the nearest), ``-1`` where none.
        hit_pixels: ``(K,)`` the pixels that show a point, as flat indices ``row * W + col``.
        hit_points: ``(K,)`` the point each of them shows (``point_index`` there).
    """

    indices: Tensor
    rows: Tensor
    cols: Tensor
    depth: Tensor
    point_index: Tensor
    hit_pixels: Tensor
    hit_points: Tensor

    @property
    def valid(self) -> Tensor:
        """``(H, W)`` bool: pixels that show a point."""
        return self.point_index >= 0


def project_scan(
    points: np.ndarray | Tensor, matrix: np.ndarray | Tensor, height: int, width: int
) -> ScanProjection:
    """Project ``points`` ``(N, >=3)`` (lidar frame) with the ``3x4`` ``matrix`` (module doc).

    Computed in float64 so that a pixel border is decided exactly as a float64 reference does.
    Only the points in front of the camera are divided through; nothing is sorted.
    """
    xyz = torch.as_tensor(points)[:, :3].to(torch.float64)
    m = torch.as_tensor(matrix, dtype=torch.float64)
    depth = xyz @ m[2, :3] + m[2, 3]
    front = torch.nonzero(depth > 0).squeeze(1)
    uv = torch.addmm(m[:2, 3], xyz[front], m[:2, :3].T) / depth[front, None]
    u, v = uv.unbind(1)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    indices = front[inside]
    cols, rows = u[inside].long(), v[inside].long()  # truncation = floor: both are >= 0
    depth = depth[indices]
    pixel = rows * width + cols
    # z-buffer: the nearest depth per pixel, then the lowest index among the points at it
    nearest = torch.full((height * width,), torch.inf, dtype=torch.float64)
    nearest.scatter_reduce_(0, pixel, depth, reduce="amin")
    closest = depth == nearest[pixel]
    point_index = torch.full((height * width,), -1, dtype=torch.long)
    point_index.scatter_reduce_(
        0, pixel[closest], indices[closest], reduce="amin", include_self=False
    )
    shown = point_index[pixel] == indices  # one point per hit pixel
    return ScanProjection(
        indices,
        rows,
        cols,
        depth,
        point_index.view(height, width),
        pixel[shown],
        indices[shown],
    )


def point_features(points: np.ndarray | Tensor) -> Tensor:
    """``(N, 5)`` float32 per point: range, x, y, z, remission (:data:`POINT_CHANNELS`)."""
    p = torch.as_tensor(points, dtype=torch.float32)
    return torch.cat([p[:, :3].norm(dim=1, keepdim=True), p[:, :4]], dim=1)


def point_image(points: np.ndarray | Tensor, projection: ScanProjection) -> Tensor:
    """``(5, H, W)`` float32: each pixel's point's :func:`point_features`, zero where none."""
    shape = projection.point_index.shape
    out = torch.zeros((len(POINT_CHANNELS), shape[0] * shape[1]), dtype=torch.float32)
    out[:, projection.hit_pixels] = point_features(torch.as_tensor(points)[projection.hit_points]).T
    return out.view(-1, *shape)


def label_image(
    labels: np.ndarray | Tensor, projection: ScanProjection, ignore: int = 255
) -> Tensor:
    """``(H, W)`` int64: each pixel's point's label, ``ignore`` where no point."""
    shape = projection.point_index.shape
    out = torch.full((shape[0] * shape[1],), ignore, dtype=torch.long)
    out[projection.hit_pixels] = torch.as_tensor(labels, dtype=torch.long)[projection.hit_points]
    return out.view(shape)


def normalize_point_image(image: Tensor, valid: Tensor) -> Tensor:
    """``(image - POINT_MEAN) / POINT_STD`` per channel where ``valid``, zero elsewhere."""
    mean = torch.tensor(POINT_MEAN, dtype=image.dtype).view(-1, 1, 1)
    std = torch.tensor(POINT_STD, dtype=image.dtype).view(-1, 1, 1)
    return ((image - mean) / std) * valid.to(image.dtype)
