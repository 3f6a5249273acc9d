"""Tiny SemanticKITTI sequences in the dataset's real formats.

* ``velodyne/FFFFFF.bin``: float32 ``x, y, z, remission`` per point;
* ``labels/FFFFFF.label``: uint32, semantic id in the lower 16 bits, an instance id above;
* ``image_2/FFFFFF.png``: an RGB PNG (PIL) whose pixels encode their own position
  (:func:`pixel_code`), so that a test can tell which image pixel a sample's pixel came from;
* ``calib.txt`` with ``P0..P3`` and ``Tr`` in KITTI's ``%e`` form, ``poses.txt``, ``times.txt``;
* ``semantic-kitti.yaml`` beside the ``dataset`` folder, with the published label definitions.

Each frame holds *planted* points, each placed by inverting the calibration so that it lands
on a chosen pixel at a chosen depth, plus background points that never reach the image
(behind the camera or outside its field of view).

Run as a script to write a fake data root:
``python tests/datamodules/semantic_kitti_fixtures.py DIR``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

HEIGHT, WIDTH = 40, 96
# camera 2 of a small pinhole camera, with KITTI's baseline terms in the last column
P2 = np.array([[60.0, 0.0, 48.0, 2.6], [0.0, 60.0, 20.0, 0.01], [0.0, 0.0, 1.0, 0.005]])
# velodyne -> camera: x forward -> z, y left -> -x, z up -> -y (KITTI's axes), a small offset
TR = np.array([[0.0, -1.0, 0.0, -0.01], [0.0, 0.0, -1.0, -0.07], [1.0, 0.0, 0.0, -0.3]])

LABELS = {
    0: "unlabeled", 1: "outlier", 10: "car", 11: "bicycle", 13: "bus", 15: "motorcycle",
    16: "on-rails", 18: "truck", 20: "other-vehicle", 30: "person", 31: "bicyclist",
    32: "motorcyclist", 40: "road", 44: "parking", 48: "sidewalk", 49: "other-ground",
    50: "building", 51: "fence", 52: "other-structure", 60: "lane-marking", 70: "vegetation",
    71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign", 99: "other-object",
    252: "moving-car", 253: "moving-bicyclist", 254: "moving-person", 255: "moving-motorcyclist",
    256: "moving-on-rails", 257: "moving-bus", 258: "moving-truck", 259: "moving-other-vehicle",
}  # fmt: skip
LEARNING_MAP = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9,
    44: 10, 48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18,
    81: 19, 99: 0, 252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}  # fmt: skip
LEARNING_MAP_INV = {
    0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48,
    12: 49, 13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
}  # fmt: skip
CONTENT = {  # the published shares, rounded
    0: 0.0189, 1: 0.0003, 10: 0.0408, 11: 0.0002, 13: 0.00003, 15: 0.0004, 16: 0.0,
    18: 0.0021, 20: 0.0016, 30: 0.0002, 31: 1e-8, 32: 5e-9, 40: 0.1987, 44: 0.0147,
    48: 0.1439, 49: 0.0039, 50: 0.1327, 51: 0.0724, 52: 0.0024, 60: 0.00005, 70: 0.2668,
    71: 0.006, 72: 0.0781, 80: 0.0029, 81: 0.0006, 99: 0.0099, 252: 0.0018, 253: 0.0001,
    254: 0.0002, 255: 0.00004, 256: 0.0, 257: 0.0001, 258: 0.0001, 259: 0.00004,
}  # fmt: skip


@dataclass(frozen=True)
class Planted:
    """A point placed to land on pixel ``(row, col)`` at camera depth ``depth``."""

    row: int
    col: int
    depth: float
    label: int  # raw uint32 label, instance bits included
    remission: float = 0.5


def lidar_to_pixel_matrix() -> np.ndarray:
    velo = np.eye(4)
    velo[:3] = TR
    return P2 @ velo


def point_for_pixel(row: float, col: float, depth: float) -> np.ndarray:
    """The lidar point whose projection is pixel centre ``(row + .5, col + .5)`` at ``depth``."""
    m = lidar_to_pixel_matrix()
    target = depth * np.array([col + 0.5, row + 0.5, 1.0]) - m[:, 3]
    return np.linalg.solve(m[:, :3], target)


def pixel_code(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 encoding each pixel's position: R = 2 col, G = 5 row, B = 77."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([2 * cols, 5 * rows, np.full_like(rows, 77)], axis=-1).astype(np.uint8)


def decode_pixels(xa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Original ``(rows, cols)`` of each pixel of a normalised camera input ``(3, H, W)``."""
    mean = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    rgb = np.rint((xa * std + mean) * 255).astype(int)
    return rgb[1] // 5, rgb[0] // 2


def background(rng: np.random.Generator, n: int = 300) -> np.ndarray:
    """``(n, 3)`` points that never reach the image: half behind, half far to the side."""
    behind = np.c_[-rng.uniform(1, 30, n // 2), rng.uniform(-10, 10, (n // 2, 2))]
    side = np.c_[
        rng.uniform(0.5, 5, n - n // 2),
        rng.choice([-1, 1], n - n // 2) * 40,
        rng.uniform(-1, 1, n - n // 2),
    ]
    return np.r_[behind, side]


def calib_text(p2: np.ndarray = P2, tr: np.ndarray | None = TR) -> str:
    """``calib.txt`` of a sequence: ``P0..P3`` (P2 given, the others shifted) and ``Tr``."""
    mats = {
        f"P{i}": p2 + np.array([[0, 0, 0, 5.0 * (i - 2)], [0, 0, 0, 0], [0, 0, 0, 0]])
        for i in range(4)
    }
    if tr is not None:
        mats["Tr"] = tr
    return "".join(f"{k}: {' '.join(f'{v:.12e}' for v in m.ravel())}\n" for k, m in mats.items())


def write_frame(
    seq_dir: Path, frame: int, planted: Sequence[Planted], rng: np.random.Generator
) -> np.ndarray:
    """One frame: the planted points first (in order), then the background; returns points."""
    name = f"{frame:06d}"
    xyz = np.array([point_for_pixel(p.row, p.col, p.depth) for p in planted]).reshape(-1, 3)
    bg = background(rng)
    points = np.c_[
        np.r_[xyz, bg], np.r_[[p.remission for p in planted], rng.uniform(0, 1, len(bg))]
    ]
    labels = np.r_[[p.label for p in planted], np.full(len(bg), 40 | (3 << 16))].astype(np.uint32)
    for sub in ("velodyne", "labels", "image_2"):
        (seq_dir / sub).mkdir(parents=True, exist_ok=True)
    points.astype(np.float32).tofile(seq_dir / "velodyne" / f"{name}.bin")
    labels.tofile(seq_dir / "labels" / f"{name}.label")
    from PIL import Image

    Image.fromarray(pixel_code()).save(seq_dir / "image_2" / f"{name}.png")
    return points.astype(np.float32)


def default_planted(frame: int) -> list[Planted]:
    """Points of a frame: each class somewhere, an unknown id, a shared pixel (near first)."""
    shift = 3 * frame
    return [
        Planted(5, 10 + shift, 8.0, 10 | (7 << 16)),  # car, instance 7 -> class 0
        Planted(30, 70 - shift, 12.0, 40),  # road -> class 8
        Planted(20, 48, 5.0, 50 | (2 << 16), 0.9),  # building -> class 12; near, wins
        Planted(12, 80, 20.0, 77),  # 77 is not in learning_map -> ignored
        Planted(35, 3, 6.0, 70),  # vegetation -> class 14
        Planted(20, 48, 15.0, 70, 0.1),  # far point on building's pixel, written last
    ]


def write_sequence(kitti_dir: Path, seq: int, n_frames: int, seed: int = 0) -> Path:
    """Sequence ``seq`` with ``n_frames`` frames of :func:`default_planted` points."""
    seq_dir = kitti_dir / "sequences" / f"{seq:02d}"
    rng = np.random.default_rng(seed + seq)
    for frame in range(n_frames):
        write_frame(seq_dir, frame, default_planted(frame), rng)
    (seq_dir / "calib.txt").write_text(calib_text())
    pose = "1 0 0 0 0 1 0 0 0 0 1 0\n"
    (seq_dir / "poses.txt").write_text(pose * n_frames)
    (seq_dir / "times.txt").write_text("".join(f"{0.1 * i:e}\n" for i in range(n_frames)))
    return seq_dir


def write_yaml(path: Path) -> Path:
    spec = {
        "labels": LABELS,
        "content": CONTENT,
        "learning_map": LEARNING_MAP,
        "learning_map_inv": LEARNING_MAP_INV,
        "learning_ignore": {k: k == 0 for k in LEARNING_MAP_INV},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


SEQUENCES = {0: 3, 1: 2, 8: 2}  # sequence -> frames: two training sequences, validation 08


def write_semantic_kitti(root: Path, sequences: dict[int, int] | None = None) -> Path:
    """A data root ``root/semantic_kitti/{dataset/sequences/NN, semantic-kitti.yaml}``."""
    base = root / "semantic_kitti"
    for seq, n in (sequences or SEQUENCES).items():
        write_sequence(base / "dataset", seq, n)
    write_yaml(base / "semantic-kitti.yaml")
    return base / "dataset"


if __name__ == "__main__":
    print(write_semantic_kitti(Path(sys.argv[1])))
