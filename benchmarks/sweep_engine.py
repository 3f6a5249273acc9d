"""Sweep engine: wall time of 40 tiny synthetic runs, serial against a 2-process CPU pool,
and the engine's per-run overhead (everything outside ``trainer.fit``).

    python benchmarks/sweep_engine.py [--runs 40] [--epochs 5]

The overhead of a run is its total time (as ``run_one`` measures it: data generation,
network construction, Trainer set-up, testing, TensorBoard and the store's record) minus the
time spent inside ``trainer.fit``. Numbers depend on the machine and its load: compare ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ntdh_bench.config import dataset_config, run_config
from ntdh_bench.launchers import PoolLauncher, SerialLauncher, Sweep
from ntdh_bench.results import ResultStore, config_hash
from ntdh_bench.runner import RunEnv


def grid(runs: int, epochs: int) -> list[tuple[dict, str]]:
    base = dataset_config("synthetic")
    base["teacher"]["epochs"] = epochs
    configs = [
        run_config(base, "unimodal", seed, {"gap": 0.5, "data_seed": seed}, modality="xb")
        for seed in range(runs)
    ]
    return [(c, config_hash(c)) for c in configs]


def measure(launcher, runs: list[tuple[dict, str]], root: Path) -> tuple[float, list[dict]]:
    sweep = Sweep("bench", root / "results", RunEnv(root / "runs", root / "cache"))
    start = time.perf_counter()
    launcher.launch(sweep, runs, lambda record: None)
    wall = time.perf_counter() - start
    return wall, ResultStore(root / "results").done_records()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="10 runs of 3 epochs (make bench)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.epochs = 10, 3
    runs = grid(args.runs, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        serial_wall, serial = measure(SerialLauncher(), runs, Path(tmp) / "serial")
        pool_wall, pooled = measure(PoolLauncher(2), runs, Path(tmp) / "pool")
    assert len(serial) == len(pooled) == args.runs, "some runs failed"

    def overhead(records: list[dict]) -> float:
        return statistics.mean(r["timing"]["total_s"] - r["timing"]["fit_s"] for r in records)

    def fit(records: list[dict]) -> float:
        return statistics.mean(r["timing"]["fit_s"] for r in records)

    print(f"{args.runs} synthetic runs of {args.epochs} epochs (6000 samples, MLP 50-16-16-4)")
    print(f"{'launcher':<16}{'wall (s)':>10}{'fit/run (s)':>14}{'outside fit/run (s)':>22}")
    print(f"{'serial':<16}{serial_wall:>10.1f}{fit(serial):>14.3f}{overhead(serial):>22.3f}")
    print(f"{'pool, 2 workers':<16}{pool_wall:>10.1f}{fit(pooled):>14.3f}{overhead(pooled):>22.3f}")
    print(f"pool speed-up over serial: {serial_wall / pool_wall:.2f}x")
    share = overhead(serial) / statistics.mean(r["timing"]["total_s"] for r in serial)
    print(f"engine overhead (serial): {100 * share:.0f}% of each run's time")


if __name__ == "__main__":
    main()
