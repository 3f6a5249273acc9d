"""RKD's angle term: the suite's blocked law-of-cosines form against the direct form.

The direct form is the one of RKD's reference code: normalised ``(B, B, D)`` differences
multiplied together (``B^3 D`` multiply-adds, ``B^3`` tensors kept for backward), written here
in float32 as that code runs it. The suite's :func:`ntdh_bench.distillers.rkd_angles.angle_loss`
forms the cosines from the float64 Gram matrix, a block of vertices at a time. Both are timed
forward and backward (the student's gradient; the teacher's embedding is frozen, as in a KD
run) at the shapes the experiments use: digits / MNIST-M (batch 128, 256-wide embeddings),
RAVDESS (64, 128), the synthetic student (256, 16), and a wide one (128, 1024). Single thread,
median of ``--repeats``; the printed errors are each float32 loss's distance from the direct
form computed in float64.

    python benchmarks/rkd_angle.py [--quick] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ntdh_bench.distillers.rkd_angles import angle_loss

SHAPES = {  # name -> (batch, embedding width)
    "digits, MNIST-M": (128, 256),
    "RAVDESS": (64, 128),
    "synthetic": (256, 16),
    "wide": (128, 1024),
}


def direct_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """The reference code's angle loss: cosines of normalised differences, smooth L1."""

    def cosines(e: torch.Tensor) -> torch.Tensor:
        u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return u @ u.transpose(1, 2)

    return F.smooth_l1_loss(cosines(e_s), cosines(e_t))


def timed(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], e_s, e_t, repeats: int):
    """Median seconds of forward and backward of ``loss``."""
    times = []
    for i in range(repeats + 1):
        student = e_s.clone().requires_grad_()
        start = time.perf_counter()
        loss(student, e_t).backward()
        if i:  # the first is warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, median of {repeats}, forward + backward")
    print(
        f"{'shape':16} {'B':>4} {'D':>5} {'direct ms':>10} {'suite ms':>9} {'speed-up':>8}  "
        "error direct / suite"
    )
    for name, (batch, width) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        e_s = torch.randn(batch, width, generator=g).relu()
        e_t = torch.randn(batch, width, generator=g).relu()
        direct = timed(direct_loss, e_s, e_t, repeats)
        suite = timed(angle_loss, e_s, e_t, repeats)
        exact = direct_loss(e_s.double(), e_t.double()).item()
        errors = [abs(loss(e_s, e_t).item() - exact) for loss in (direct_loss, angle_loss)]
        print(
            f"{name:16} {batch:4d} {width:5d} {1e3 * direct:10.1f} {1e3 * suite:9.1f} "
            f"{direct / suite:7.1f}x  {errors[0]:.1e} / {errors[1]:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
