"""Writers of tiny NYU fixtures in the real formats.

* DDRNet's repackaged SSC frames: ``.npz`` with the real key names and dtypes (``rgb`` float32
  ``(3, H, W)``, ``depth`` float32 ``(1, H, W)``, ``tsdf_hr`` / ``tsdf_lr`` float32,
  ``target_hr`` / ``target_lr`` uint8, ``position`` int32 ``(H, W)``), on a scaled-down grid.
* The labelled release ``nyu_depth_v2_labeled.mat``: MATLAB v7.3 (HDF5) with the transposed
  axes h5py sees (``images`` ``(N, 3, W, H)`` uint8, ``depths`` ``(N, W, H)`` float32 metres,
  ``labels`` ``(N, W, H)`` uint16 over the 894 classes), and ``splits.mat`` /
  ``classMapping40.mat`` as MATLAB v5 files.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io

SSC_GRID = (10, 6, 8)  # (x, y, z): W != D, so a transposition error shows
SSC_SCALE = 2
SSC_IMAGE = (12, 16)


def ssc_frame(seed: int, grid=SSC_GRID, scale=SSC_SCALE, image=SSC_IMAGE) -> dict[str, np.ndarray]:
    """One frame's arrays: random labels and TSDF, every pixel mapped to a random voxel."""
    rng = np.random.default_rng(seed)
    hr = tuple(g * scale for g in grid)
    h, w = image
    target = rng.integers(0, 12, grid).astype(np.uint8)
    target[rng.random(grid) < 0.1] = 255
    tsdf_lr = rng.choice(np.array([-0.5, 0.0005, 0.5, 1.0], dtype=np.float32), grid)
    position = rng.integers(1, int(np.prod(hr)), (h, w)).astype(np.int32)
    position[0, :3] = 0  # DDRNet's "no voxel"
    return {
        "rgb": rng.standard_normal((3, h, w)).astype(np.float32),
        "depth": rng.uniform(0.5, 5.0, (1, h, w)).astype(np.float32),
        "tsdf_hr": rng.uniform(-1, 1, hr).astype(np.float32),
        "tsdf_lr": tsdf_lr,
        "target_hr": np.zeros(hr, dtype=np.uint8),
        "target_lr": target,
        "position": position,
    }


def write_ssc(root: Path, n_train: int = 6, n_test: int = 2, **kwargs) -> dict[str, list[Path]]:
    """``root/train/NYU*.npz`` and ``root/test/NYU*.npz``; returns the paths by folder."""
    out: dict[str, list[Path]] = {}
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1000)):
        (root / split).mkdir(parents=True, exist_ok=True)
        out[split] = []
        for i in range(n):
            path = root / split / f"NYU{offset + i:04d}_0000_voxels.npz"
            np.savez_compressed(path, **ssc_frame(offset + i, **kwargs))
            out[split].append(path)
    return out


def labelled_arrays(n: int, height: int = 8, width: int = 10, seed: int = 0) -> dict:
    """``(N, H, W)``-ordered arrays as MATLAB holds them (RGB uint8, depth metres, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 9.0, (n, height, width)).astype(np.float32)
    depths[:, 0, 0] = 0.0  # unmeasured
    labels = rng.integers(0, 895, (n, height, width)).astype(np.uint16)
    labels[:, 1, 1] = 0  # unlabelled
    return {"images": images, "depths": depths, "labels": labels}


def write_labelled_mat(path: Path, arrays: dict, drop: tuple[str, ...] = ()) -> Path:
    """The v7.3 layout: MATLAB's column-major arrays read by h5py with the axes reversed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        if "images" not in drop:
            f["images"] = arrays["images"].transpose(0, 3, 2, 1)  # (N, 3, W, H)
        if "depths" not in drop:
            f["depths"] = arrays["depths"].transpose(0, 2, 1)  # (N, W, H)
        if "labels" not in drop:
            f["labels"] = arrays["labels"].transpose(0, 2, 1)
    with open(path, "r+b") as raw:  # MATLAB's 128-byte text header in the user block
        raw.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: fixture HDF5 schema")
    return path


def write_splits(path: Path, train: list[int], test: list[int]) -> Path:
    """``splits.mat``: 1-based ``trainNdxs`` / ``testNdxs`` columns, as the official file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        path,
        {
            "trainNdxs": np.array(train, dtype=np.uint16)[:, None],
            "testNdxs": np.array(test, dtype=np.uint16)[:, None],
        },
    )
    return path


def write_mapping(path: Path, map_class: np.ndarray) -> Path:
    """``classMapping40.mat`` with ``mapClass`` ``(1, 894)`` (0-based 894 -> 1..40)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"mapClass": map_class.astype(np.uint8)[None, :]})
    return path
