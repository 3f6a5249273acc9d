"""Per-step training time of every registered distiller, relative to ``kd``, on synthetic data.

Each method trains the synthetic-data student (MLP 50-16-16-4, the teacher's outputs cached)
through ``CrossModalKD`` for a few epochs; a step is timed from Lightning's
``on_train_batch_start`` to ``on_train_batch_end`` (forward, distiller, backward, optimizer)
and the first epoch is discarded as warm-up. Both the wall time and the process's CPU time
(all threads) are recorded: on a busy machine the wall time also counts other processes' turns,
the CPU time does not. The methods run round-robin ``--repeats`` times and each reports the
smallest of its per-run medians. ``none`` is the cross-entropy-only student, the floor under
every method. Torch runs on ``--threads`` threads (default 1): the models are tiny, and on a
shared machine idle OpenMP threads spin while they wait for a descheduled sibling, which
inflates both clocks.

    python benchmarks/distiller_step_time.py [--epochs 3] [--repeats 2] [--threads 1]
        [--methods kd crd]
"""

from __future__ import annotations

import argparse
import statistics

import lightning as L
import torch
from step_timing import StepTimer

from datamodules import SyntheticDataModule
from models import MLP
from ntdh_bench.distillers import DISTILLERS, build_distiller
from ntdh_bench.module import CrossModalKD
from ntdh_bench.training import quiet_lightning


def time_method(name: str, epochs: int, batch_size: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds per step of distiller ``name`` (``"none"``: CE only)."""
    L.seed_everything(0, verbose=False)
    dm = SyntheticDataModule(gap=0.2, batch_size=batch_size)
    distiller = None if name == "none" else build_distiller(name)
    module = CrossModalKD(
        MLP(50, 4), MLP(50, 4), distiller, num_classes=4, lam=0.5 if distiller else 0.0
    )
    timer = StepTimer()
    with quiet_lightning():
        trainer = L.Trainer(
            max_epochs=epochs,
            limit_val_batches=0,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(module, datamodule=dm)
    return 1000.0 * statistics.median(timer.wall), 1000.0 * statistics.median(timer.cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up")
    parser.add_argument("--repeats", type=int, default=2, help="round-robin runs per method")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--methods", nargs="+", default=["none", *sorted(DISTILLERS)])
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 repeat (make bench)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.repeats = 2, 1
    if args.epochs < 2 or args.repeats < 1:
        parser.error("need --epochs >= 2 (the first one is not timed) and --repeats >= 1")
    torch.set_num_threads(args.threads)
    methods = args.methods if "kd" in args.methods else ["kd", *args.methods]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name in methods:
            runs[name].append(time_method(name, args.epochs, args.batch_size))
    wall = {name: min(w for w, _ in values) for name, values in runs.items()}
    cpu = {name: min(c for _, c in values) for name, values in runs.items()}
    print(
        f"synthetic data, 6000 training samples, batch {args.batch_size}, "
        f"{torch.get_num_threads()} CPU threads; best of {args.repeats} medians over epochs "
        f"2..{args.epochs}"
    )
    print(f"{'method':<10} {'wall ms/step':>12} {'x kd':>7} {'cpu ms/step':>12} {'x kd':>7}")
    for name in methods:
        print(
            f"{name:<10} {wall[name]:12.2f} {wall[name] / wall['kd']:7.2f} "
            f"{cpu[name]:12.2f} {cpu[name] / cpu['kd']:7.2f}"
        )


if __name__ == "__main__":
    main()
