"""Algorithm 1's permutation saliency: the vectorised pass against a plain per-feature loop.

Scores every one of 784 input features (an MNIST-sized input) with M = 10 permutations: the
plain loop builds one permuted input and runs one forward per feature and repeat (7,840
forwards); :func:`ntdh_bench.masking.compute_saliency` runs the permuted copies in
chunked batched forwards (items and repeats together), enters them after the network's first
linear layer (a rank-1 update of its output), runs the MLP's other layers as matrix products
that leave the logits classes first, and computes the student's half of the NCJSD once
(:mod:`ntdh_bench.masking.ncjsd`). Both use the same
permutations, so their results must agree to rounding; the script checks that and prints the
speed ratio (issue 14 asks for at least 50x). Both sides run on one thread.

    python benchmarks/saliency_speed.py [--reading ablation] [--quick]
    python benchmarks/saliency_speed.py --samples 2000 --hidden 256 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models.mlp import MLP
from ntdh_bench.masking import compute_saliency, saliency_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--samples", type=int, default=1000, help="n, samples scored")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10, help="M, permutations per feature")
    parser.add_argument("--hidden", type=int, nargs="+", default=[16, 16])
    parser.add_argument("--rounds", type=int, default=3, help="vectorised timing: median of N")
    parser.add_argument("--reading", choices=("permuted", "ablation"), default="permuted")
    parser.add_argument(
        "--loop-items",
        type=int,
        default=None,
        help="time the loop on the first N features only and scale up (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="loop timed on 50 features, 2 rounds (make bench)"
    )
    args = parser.parse_args()
    if args.quick:
        args.loop_items, args.rounds = args.loop_items or 50, 2
    torch.set_num_threads(1)  # the machine is shared; one thread for both sides

    torch.manual_seed(0)
    n, d, c = args.samples, args.features, args.classes
    xa = torch.randn(n, d)
    target = torch.randint(0, c, (n,))
    f_a = MLP(d, c, args.hidden).eval()
    f_b = MLP(d, c, args.hidden).eval()
    with torch.no_grad():
        reference = f_b(torch.randn(n, d)).logits
    common = dict(reading=args.reading, repeats=args.repeats, seed=0)

    compute_saliency(f_a, xa[:64], reference[:64], target[:64], **common)  # warm-up
    walls, cpus = [], []
    for _ in range(args.rounds):  # median of a few: the machine may be shared
        start, cpu = time.perf_counter(), time.process_time()
        fast = compute_saliency(f_a, xa, reference, target, **common)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    fast_s, fast_cpu = statistics.median(walls), statistics.median(cpus)

    items = args.loop_items or d
    start, cpu = time.perf_counter(), time.process_time()
    loop = saliency_loop(f_a, xa, reference, target, items=items, **common)
    scale = d / items
    loop_s, loop_cpu = (time.perf_counter() - start) * scale, (time.process_time() - cpu) * scale

    gap = float((fast.perturbed[:items] - loop.perturbed).abs().max())
    print(
        f"{args.reading} saliency of {d} features, M = {args.repeats}, n = {n}, {c} classes, "
        f"MLP {d}-{'-'.join(map(str, args.hidden))}-{c}, {torch.get_num_threads()} threads"
    )
    scaled = "" if items == d else f" (timed on {items} features, scaled)"
    print(f"plain per-feature loop: {loop_s:8.3f} s wall, {loop_cpu:8.3f} s CPU{scaled}")
    print(
        f"vectorised:             {fast_s:8.3f} s wall, {fast_cpu:8.3f} s CPU "
        f"(median of {args.rounds}; fastest {min(cpus):.3f} s CPU)"
    )
    print(
        f"ratio: {loop_s / fast_s:.1f}x faster in wall time, {loop_cpu / fast_cpu:.1f}x in CPU "
        f"time (max difference in NCJSD {gap:.1e})"
    )
    if gap > 1e-5:
        raise SystemExit("the vectorised saliency disagrees with the loop")


if __name__ == "__main__":
    main()
