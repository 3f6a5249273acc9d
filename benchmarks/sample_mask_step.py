"""Algorithm 2's cost per training step: a KD step with the sample mask against one without.

The synthetic-data student (MLP 50-16-16-4, the teacher's outputs cached) trains through
``CrossModalKD`` with the ``kd`` distiller, once plain and once with each
:class:`ntdh_bench.callbacks.SampleMask` kind (``true`` / ``false`` score every sample's NCJSD
and take the top or bottom ``ratio``; ``random`` draws; ``pssm`` is the released code's cosine
weighting). Steps are timed as runs take them, a whole epoch in one Lightning step
(:mod:`ntdh_bench.whole_epochs`): each epoch's time over its steps (forward, mask, distiller,
backward, optimizer; no validation); the first epoch is warm-up. The runs alternate
``--repeats`` times single-threaded (the machine is shared) and each reports the median over
its steps, then the median over repeats, of the process's CPU time and of the wall time.
Target (issue 14): a masked step within 5% of a plain one.

    python benchmarks/sample_mask_step.py [--quick] [--epochs 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import lightning as L
import torch
from step_timing import EpochStepTimer

from datamodules import SyntheticDataModule
from models import MLP
from ntdh_bench.callbacks import SampleMask
from ntdh_bench.distillers import build_distiller
from ntdh_bench.module import CrossModalKD
from ntdh_bench.training import quiet_lightning

KINDS = ("none", "true", "false", "random", "pssm")


def time_kind(kind: str, epochs: int, batch_size: int) -> tuple[float, float]:
    """Median CPU and wall milliseconds per KD step with sample mask ``kind`` (or none)."""
    L.seed_everything(0, verbose=False)
    dm = SyntheticDataModule(gap=0.2, batch_size=batch_size)
    module = CrossModalKD(MLP(50, 4), MLP(50, 4), build_distiller("kd"), num_classes=4)
    timer = EpochStepTimer()
    callbacks: list[L.Callback] = [timer]
    if kind != "none":
        callbacks.append(SampleMask(kind, 0.25))
    with quiet_lightning():
        trainer = L.Trainer(
            max_epochs=epochs,
            limit_val_batches=0,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=callbacks,
        )
        trainer.fit(module, datamodule=dm)
    if not module.whole_epoch_steps:
        raise RuntimeError("the run fell back to Lightning's per-step loop; timings would differ")
    return 1000.0 * statistics.median(timer.cpu), 1000.0 * statistics.median(timer.wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs, 2 repeats")
    parser.add_argument("--epochs", type=int, default=4, help="the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.repeats = 3, 2
    torch.set_num_threads(1)
    kinds = args.kinds if "none" in args.kinds else ["none", *args.kinds]
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            runs[kind].append(time_kind(kind, args.epochs, args.batch_size))
    cpu = {k: statistics.median(c for c, _ in v) for k, v in runs.items()}
    wall = {k: statistics.median(w for _, w in v) for k, v in runs.items()}
    print(
        f"KD step, synthetic data, batch {args.batch_size}, 1 thread, torch {torch.__version__}; "
        f"median of {args.repeats} runs of the median per-step time of epochs 2..{args.epochs}"
    )
    print(f"{'mask':<8} {'cpu ms':>8} {'ratio':>6} {'wall ms':>8} {'ratio':>6}")
    for kind in kinds:
        print(
            f"{kind:<8} {cpu[kind]:8.3f} {cpu[kind] / cpu['none']:6.2f} "
            f"{wall[kind]:8.3f} {wall[kind] / wall['none']:6.2f}"
        )


if __name__ == "__main__":
    main()
