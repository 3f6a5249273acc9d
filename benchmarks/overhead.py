"""The suite's overhead: one KD student run through ``runner.execute_run`` against the same
work as a plain PyTorch loop.

Both sides build the same datamodule (the same tensors), read the same cached teacher, seed and
build the same student MLP, use the same optimizer and the same loss
``(1 - lam) CE + lam T^2 KL(softmax(t / T) || softmax(s / T))`` (or ``ce_weight CE + lam KD``,
the released protocol) with the teacher's outputs computed once and served by index, draw the
same batch order (``TensorBatchLoader``: ``randperm`` from ``seed + epoch``), validate at the
same epochs (student and teacher accuracy and the five logged divergences) and test once at the
end. ``synthetic`` validates after every epoch (the issue's setting), ``synthetic-fig3`` once,
after the last, as Fig. 3 and the method tables now run it (``validate_after_last_epoch``).
The plain loop's test accuracy is printed next to the suite's: equal up to float rounding means
both sides did the same computation.

The teacher is trained once before timing (it is cached; both sides read it). Each side runs
``--repeats`` times, alternating, single-threaded (the machine is shared); the ratio is the
median over the repetitions of ``suite / plain``, each pair run back to back (this machine's
speed drifts by 10 to 30% within minutes, which a ratio of separate medians would mix in), of
the process's CPU time (``time.process_time``, which a busy machine does not inflate) and of
the wall time. The times printed are the medians of each side.

    python benchmarks/overhead.py [--quick] [--repeats 5]
        [--configs synthetic synthetic-fig3 released digits]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ntdh_bench.builders import build_network, build_run_datamodule
from ntdh_bench.cache import CacheEntry
from ntdh_bench.config import dataset_config, run_config, validate_after_last_epoch
from ntdh_bench.divergence import divergence_report
from ntdh_bench.runner import RunEnv, execute_run
from ntdh_bench.teachers import teacher_identity

# name -> (dataset, protocol, --set overrides in --quick mode)
CONFIGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "synthetic": ("synthetic", "suite", ()),
    "synthetic-fig3": ("synthetic", "suite", ()),
    "released": ("synthetic", "released", ("teacher.epochs=200", "student.epochs=200")),
    "digits": ("digits", "suite", ("student.epochs=5", "teacher.epochs=5")),
}
# as the experiments that read no validation curves run them (Fig. 3, Tables II and III):
# validated once, after the last epoch; the others validate after every epoch (the YAML's)
AS_EXPERIMENTS_RUN = {"synthetic-fig3"}


def kd_config(name: str, quick: bool) -> dict[str, Any]:
    """The resolved config of the benchmark's KD student run (gap 0.2 where there is one)."""
    dataset, protocol, quick_sets = CONFIGS[name]
    base = dataset_config(dataset, protocol=protocol, overrides=quick_sets if quick else ())
    if name in AS_EXPERIMENTS_RUN:
        base = validate_after_last_epoch(base)
    gap = {"gap": 0.2} if dataset == "synthetic" else {}
    return run_config(base, "kd", seed=0, dataset=gap)


def _optimizer(params, train: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The run's optimizer as a plain script would build it, with the kernel choice the suite
    makes (fused on the CPU), so both sides do the same update."""
    params = list(params)
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(
            params,
            lr=train["lr"],
            momentum=train["momentum"],
            weight_decay=train["weight_decay"],
            fused=True,
        )
    cls = torch.optim.AdamW if train["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=train["lr"], weight_decay=train["weight_decay"], fused=True)


def plain_run(config: Mapping[str, Any], env: RunEnv) -> float:
    """The same KD run as a plain loop; returns the student's test accuracy."""
    dm = build_run_datamodule(config)
    found = CacheEntry(env.cache_dir, "teachers", teacher_identity(config)).read("model.pt")
    if found is None:
        raise RuntimeError("the teacher is not cached; run the suite's teacher first")
    teacher = build_network(config, dm, "xa")
    teacher.load_state_dict(found[0]["model.pt"])
    teacher.requires_grad_(False).eval()
    torch.manual_seed(config["seed"])
    student = build_network(config, dm, "xb")
    train = config["student"]
    optimizer = _optimizer(student.parameters(), train)
    splits = {s: dm.split_tensors(s) for s in ("train", "val", "test")}
    with torch.no_grad():
        cached = {s: teacher(t["xa"]).logits for s, t in splits.items()}
    T, lam = config["distiller"]["T"], train["lam"]
    ce_weight = 1.0 - lam if train["ce_weight"] is None else train["ce_weight"]
    data, n = splits["train"], len(splits["train"]["y"])
    batch_size = dm.batch_size

    def evaluate(split: str) -> float:
        tensors, teacher_logits = splits[split], cached[split]
        correct, total, sums = 0, 0, dict.fromkeys(("kl", "tckl", "nckl", "tcjsd", "ncjsd"), 0.0)
        with torch.no_grad():
            for start in range(0, len(tensors["y"]), dm.eval_batch_size):
                part = slice(start, start + dm.eval_batch_size)
                logits, y = student(tensors["xb"][part]).logits, tensors["y"][part]
                correct += int((logits.argmax(1) == y).sum())
                total += len(y)
                report = divergence_report(teacher_logits[part], logits, y, train["monitor_T"])
                for key in sums:
                    sums[key] += float(report[key].sum())
        return correct / total

    for epoch in range(train["epochs"]):
        student.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(dm.seed + epoch))
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits = student(data["xb"][idx]).logits
            ce = F.cross_entropy(logits, data["y"][idx])
            log_t = F.log_softmax(cached["train"][idx] / T, dim=1)
            log_s = F.log_softmax(logits / T, dim=1)
            kd = T * T * (log_t.exp() * (log_t - log_s)).sum(1).mean()
            loss = ce_weight * ce + lam * kd
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if (epoch + 1) % train["val_every"] == 0:
            student.eval()
            evaluate("val")
    student.eval()
    return evaluate("test")


def suite_run(config: Mapping[str, Any], env: RunEnv) -> float:
    """The run through the suite; returns the student's test accuracy."""
    return execute_run(config, env).metrics["test/acc"]


def clocked(fn: Callable[[], float]) -> tuple[float, float, float]:
    """``(cpu_s, wall_s, result)`` of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def measure(name: str, quick: bool, repeats: int, root: Path) -> dict[str, float]:
    """Median CPU and wall seconds of both sides and their ratios for one config."""
    config = kd_config(name, quick)
    env = RunEnv(runs_dir=root / "runs", cache_dir=root / "cache", experiment="overhead")
    execute_run({**config, "role": "teacher"}, env)  # train and cache the teacher, untimed
    times: dict[str, list[tuple[float, float, float]]] = {"suite": [], "plain": []}
    for _ in range(repeats):
        times["suite"].append(clocked(lambda: suite_run(config, env)))
        times["plain"].append(clocked(lambda: plain_run(config, env)))
    med = {
        f"{side}_{clock}": statistics.median(t[i] for t in runs)
        for side, runs in times.items()
        for i, clock in enumerate(("cpu", "wall"))
    }
    for i, clock in enumerate(("cpu", "wall")):  # each pair ran back to back: same machine
        pairs = zip(times["suite"], times["plain"], strict=True)
        med[f"ratio_{clock}"] = statistics.median(s[i] / p[i] for s, p in pairs)
    med["suite_acc"], med["plain_acc"] = times["suite"][-1][2], times["plain"][-1][2]
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs (make bench)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    print(
        f"{'config':14} {'suite cpu':>9} {'plain cpu':>9} {'ratio':>6} | {'suite wall':>10} "
        f"{'plain wall':>10} {'ratio':>6} | test acc suite / plain"
    )
    with tempfile.TemporaryDirectory(prefix="ntdh-overhead-") as tmp:
        for name in args.configs:
            m = measure(name, args.quick, args.repeats, Path(tmp) / name)
            print(
                f"{name:14} {m['suite_cpu']:9.2f} {m['plain_cpu']:9.2f} {m['ratio_cpu']:6.2f} | "
                f"{m['suite_wall']:10.2f} {m['plain_wall']:10.2f} {m['ratio_wall']:6.2f} | "
                f"{m['suite_acc']:.4f} / {m['plain_acc']:.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
