"""Lidar-to-camera projection: the suite's torch version against a plain NumPy reference.

Both compute the same thing for one scan (``datamodules/lidar_projection.py``): the pixel of
every point in front of camera 2 and inside the image, a z-buffer in which the nearest point
wins a shared pixel (the lowest point index on a tie), the five-channel point image, the valid
mask and the label image. :func:`project_reference` is the readable NumPy way (homogeneous
coordinates, projection of every point, ``np.lexsort`` by pixel then depth, first of each
pixel); :func:`ours` calls the library (one scatter-min, no sort, only the points in front of
the camera projected). The script checks that both agree exactly, then prints scans per
second on one core for each and the ratio (target: at least 2x).

    python benchmarks/kitti_projection.py            # sequence 07, frame 000964 of shared/data
    python benchmarks/kitti_projection.py --scan S.bin --labels S.label --calib calib.txt \\
        --width 1241 --height 376
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core for both: NumPy's BLAS would take them all

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamodules.lidar_projection import label_image, point_image, project_scan  # noqa: E402
from datamodules.semantic_kitti_files import lidar_to_image, read_labels, read_scan  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "semantic_kitti"
SEQ07 = SHARED / "dataset" / "sequences" / "07"


def project_reference(
    points: np.ndarray, labels: np.ndarray, matrix: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point image ``(5, H, W)``, valid ``(H, W)`` and label image ``(H, W)``, in NumPy."""
    hom = np.hstack([points[:, :3].astype(np.float64), np.ones((len(points), 1))])
    cam = hom @ matrix.T
    depth = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = cam[:, 0] / depth, cam[:, 1] / depth
    keep = np.flatnonzero((depth > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height))
    pixel = np.floor(v[keep]).astype(np.int64) * width + np.floor(u[keep]).astype(np.int64)
    order = np.lexsort((keep, depth[keep], pixel))  # by pixel, then depth, then index
    pixel, winner = pixel[order], keep[order]
    first = np.r_[True, pixel[1:] != pixel[:-1]]
    pixel, winner = pixel[first], winner[first]
    channels = [np.linalg.norm(points[:, :3], axis=1), *points[:, :4].T]
    image = np.zeros((len(channels), height * width), dtype=np.float32)
    for c, values in enumerate(channels):
        image[c, pixel] = values[winner]
    valid = np.zeros(height * width, dtype=bool)
    valid[pixel] = True
    label = np.full(height * width, 255, dtype=np.int64)
    label[pixel] = labels[winner]
    shape = (height, width)
    return image.reshape(-1, *shape), valid.reshape(shape), label.reshape(shape)


def ours(
    points: np.ndarray, labels: np.ndarray, matrix: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    projection = project_scan(points, matrix, height, width)
    image = point_image(points, projection)
    label = label_image(labels, projection)
    return image.numpy(), projection.valid.numpy(), label.numpy()


def scans_per_second(
    functions: dict[str, Callable[[], object]], seconds: float, rounds: int
) -> dict[str, float]:
    """Best rate of each function over ``rounds`` rounds of about ``seconds`` each.

    Rates are per CPU second of this (single-threaded) process, so time spent waiting for a
    core on a shared machine does not count; the functions take turns round by round and
    the best round of each is the least disturbed one.
    """
    best = dict.fromkeys(functions, 0.0)
    for fn in functions.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in functions.items():
            n, start = 0, time.process_time()
            while time.process_time() - start < seconds:
                fn()
                n += 1
            best[name] = max(best[name], n / (time.process_time() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=Path, default=SEQ07 / "velodyne" / "000964.bin")
    parser.add_argument("--labels", type=Path, default=SEQ07 / "labels" / "000964.label")
    parser.add_argument("--calib", type=Path, default=SEQ07 / "calib.txt")
    parser.add_argument("--width", type=int, default=1226, help="sequence 07's image size")
    parser.add_argument("--height", type=int, default=370)
    parser.add_argument("--seconds", type=float, default=1.0, help="per timing round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.3 s (make bench)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.3, 3
    torch.set_num_threads(1)

    if not args.scan.is_file():
        print(f"skipped: no scan at {args.scan}; pass --scan, --labels and --calib")
        return
    points = read_scan(args.scan)
    labels = (read_labels(args.labels, len(points)) & 0xFFFF).astype(np.int64)
    matrix = lidar_to_image(args.calib)
    size = (args.height, args.width)

    a, b = ours(points, labels, matrix, *size), project_reference(points, labels, matrix, *size)
    same = [np.allclose(a[0], b[0], rtol=1e-6, atol=1e-5)]  # range: float32 norms round apart
    same += [np.array_equal(x, y) for x, y in zip(a[1:], b[1:], strict=True)]
    for name, agree in zip(("point image", "valid", "labels"), same, strict=True):
        if not agree:
            raise SystemExit(f"ours and the NumPy reference disagree on the {name}")
    print(f"{args.scan}: {len(points)} points, {int(a[1].sum())} pixels hit in {size[1]}x{size[0]}")

    rates = scans_per_second(
        {
            "ours": lambda: ours(points, labels, matrix, *size),
            "reference": lambda: project_reference(points, labels, matrix, *size),
        },
        args.seconds,
        args.rounds,
    )
    fast, slow = rates["ours"], rates["reference"]
    print(f"ours (torch, 1 thread): {fast:8.1f} scans per CPU second")
    print(f"NumPy reference:        {slow:8.1f} scans per CPU second")
    print(f"ratio:                  {fast / slow:8.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
