"""Algorithm 2 where the paper uses it: a SemanticKITTI KD step with the sample mask against one
without (Table IV's PMF system, camera teaching the projected lidar scan).

The paper applies the sample mask to SemanticKITTI and NYU Depth V2, scoring every valid,
labelled pixel of a batch (Sec. IV-C, Table IV, Fig. 11); ``sample_mask_step.py`` times the same
mask on the synthetic 50-16-16-4 MLP, where a step is under a millisecond and the mask's fixed
cost (a few dozen small kernels) is a large share of it. Here the step is one of Table IV's:
the real scan (default: ``shared/data`` sequence 07, frame 000964, with its labels and
calibration) is laid out as a SemanticKITTI sequence of a few frames in a temporary data root,
each with a random camera image of KITTI's size written as PNG (image content does not change
the cost), and read by :class:`datamodules.SemanticKittiDataModule` with the config's training
crop and batch (PMF's 256 x 1024, 4). Networks, distiller, loss weight, optimizer and mask
settings are Table IV's PMF system as ``experiments/configs/semantic_kitti.yaml`` sets them:
the PMF-light streams of its quick systems (``pmf_kl`` with tau 0; ``--pmf``: its full PMF
streams, a ResNet-34 each, tau 0.7), ``lam = 0.5``, SGD, the first mask ratio (0.25) at
T = 1. Each mask kind trains its own ``CrossModalKD`` (the same initialisation) with
Algorithm 2's weighting, added as :class:`ntdh_bench.callbacks.SampleMask` adds it. A step is
the module's training loss (student and teacher forward, mask, distiller), backward and the SGD
step, timed directly: at a second or more a step, Lightning's loop around it is noise. The
kinds take turns step by step on the same batches, so that the machine's drift and each crop's
cost fall on every kind alike; the first ``--warmup`` rounds are dropped; each kind reports its
median step and the median of its ratios to the unmasked step of the same round. Target
(issue 14): a masked step within 5% of a plain one.

    python benchmarks/sample_mask_dense.py [--pmf] [--quick] [--steps 8]
    python benchmarks/sample_mask_dense.py --scan S.bin --labels S.label --calib calib.txt
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from datamodules import SemanticKittiDataModule
from datamodules.semantic_kitti_files import read_scan
from models import build_model
from ntdh_bench.config import dataset_config
from ntdh_bench.distillers import build_distiller
from ntdh_bench.masking import SampleWeighting
from ntdh_bench.module import CrossModalKD

KINDS = ("none", "true", "false", "random", "pssm")
FILE_ARGS = ("scan", "labels", "calib", "yaml")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "semantic_kitti"
SEQ07 = SHARED / "dataset" / "sequences" / "07"
KITTI_IMAGE = (376, 1241)  # camera 2's image size in sequence 07 (height, width)


def write_root(root: Path, scan: Path, labels: Path, calib: Path, yaml: Path, frames: int) -> Path:
    """A SemanticKITTI data root whose sequence 00 repeats one real scan ``frames`` times, each
    with a random camera image; returns ``root``."""
    seq = root / "semantic_kitti" / "dataset" / "sequences" / "00"
    for sub in ("velodyne", "labels", "image_2"):
        (seq / sub).mkdir(parents=True)
    (seq / "calib.txt").symlink_to(calib.resolve())
    (root / "semantic_kitti" / "semantic-kitti.yaml").symlink_to(yaml.resolve())
    rng = np.random.default_rng(0)
    for i in range(frames):
        name = f"{i:06d}"
        (seq / "velodyne" / f"{name}.bin").symlink_to(scan.resolve())
        (seq / "labels" / f"{name}.label").symlink_to(labels.resolve())
        pixels = rng.integers(0, 256, (*KITTI_IMAGE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(seq / "image_2" / f"{name}.png")
    return root


def table4_pmf(full_size: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config (``experiments/configs/semantic_kitti.yaml``) and Table IV's PMF system in
    it (``model``, ``distiller``): its full networks, or its quick systems' ones."""
    config = dataset_config("semantic_kitti")
    quick = config if full_size else dataset_config("semantic_kitti", quick="table4")
    return config, quick["table4"]["systems"]["pmf"]


def build_module(
    kind: str, dm: SemanticKittiDataModule, config: dict[str, Any], system: dict[str, Any]
) -> CrossModalKD:
    """Table IV's PMF KD student module (same initialisation for every kind), with Algorithm
    2's weighting added as :class:`ntdh_bench.callbacks.SampleMask` adds it."""
    L.seed_everything(0, verbose=False)
    shape_a, shape_b = dm.input_shapes()
    model = system["model"]
    args = {k: v for k, v in model.items() if k != "name"}
    teacher = build_model(model["name"], shape_a, dm.num_classes, **args)
    student = build_model(model["name"], shape_b, dm.num_classes, **args)
    options = {k: v for k, v in system["distiller"].items() if k != "name"}
    distiller = build_distiller(system["distiller"]["name"], task=dm.task, **options)
    train = config["student"]
    module = CrossModalKD(
        student,
        teacher,
        distiller,
        dm.num_classes,
        lam=train["lam"],
        task=dm.task,
        optimizer=train["optimizer"],
    )
    if kind != "none":
        mask = config["table4"]["sample_mask"]
        module.add_distill_weighting(SampleWeighting(kind, config["table4"]["ratios"][0], **mask))
    return module


def timed_step(
    module: CrossModalKD, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor]
) -> tuple[float, float]:
    """Wall and CPU seconds of one training step: forward (the teacher's too: dense batches
    are cropped at random, so nothing is cached), mask, distiller, backward, optimizer."""
    start, cpu = time.perf_counter(), time.process_time()
    loss = module.training_loss(dict(batch))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start, time.process_time() - cpu


def endless(dm: SemanticKittiDataModule) -> Iterator[dict[str, Tensor]]:
    """Training batches, epoch after epoch (new random crops and flips each time)."""
    while True:
        yield from dm.train_dataloader()


def time_kinds(
    kinds: list[str],
    dm: SemanticKittiDataModule,
    config: dict[str, Any],
    system: dict[str, Any],
    steps: int,
    warmup: int,
) -> dict[str, tuple[list[float], list[float]]]:
    """Per kind, the wall and CPU seconds of its timed steps. The kinds take turns step by
    step on the same batches (this machine's speed drifts; a step's cost depends on its crop)."""
    modules = {kind: build_module(kind, dm, config, system).train() for kind in kinds}
    optimizers = {kind: m.configure_optimizers() for kind, m in modules.items()}
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in kinds}
    batches = endless(dm)
    for step in range(warmup + steps):
        batch = next(batches)
        for kind in kinds:
            wall, cpu = timed_step(modules[kind], optimizers[kind], batch)
            if step >= warmup:
                times[kind][0].append(wall)
                times[kind][1].append(cpu)
    return times


def scored_points(dm: SemanticKittiDataModule) -> int:
    """Valid, labelled pixels of the first training batch: the items the mask ranks."""
    batch = next(iter(dm.train_dataloader()))
    return int((batch["valid"] & (batch["y"] != 255)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=Path, default=SEQ07 / "velodyne" / "000964.bin")
    parser.add_argument("--labels", type=Path, default=SEQ07 / "labels" / "000964.label")
    parser.add_argument("--calib", type=Path, default=SEQ07 / "calib.txt")
    parser.add_argument("--yaml", type=Path, default=SHARED / "semantic-kitti.yaml")
    parser.add_argument(
        "--pmf",
        action="store_true",
        help="Table IV's full PMF streams (ResNet-34, no stem stride): about 35 s a step on one "
        "core, so 5 kinds x (steps + warm-up) take 14 minutes with --steps 3; without it the "
        "quick systems' PMF-light",
    )
    parser.add_argument("--crop", type=int, nargs=2, default=None, help="default: the config's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per kind")
    parser.add_argument("--warmup", type=int, default=1, help="rounds of steps dropped")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--quick", action="store_true", help="3 steps (make bench QUICK=1)")
    args = parser.parse_args()
    if args.quick:
        args.steps = 3
    files = {name: getattr(args, name) for name in FILE_ARGS}
    missing = [path for path in files.values() if not path.exists()]
    if missing and all(path == parser.get_default(name) for name, path in files.items()):
        print(f"not run: no SemanticKITTI scan in {SEQ07}; pass --scan, --labels, --calib, --yaml")
        return
    if missing:
        raise SystemExit(
            f"missing {', '.join(map(str, missing))}: pass --scan, --labels, --calib and --yaml "
            "(a SemanticKITTI scan, its labels, its sequence's calib.txt, semantic-kitti.yaml)"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"points in the scan: {len(read_scan(args.scan))}")
    config, system = table4_pmf(full_size=args.pmf)
    model = system["model"]
    args.crop = args.crop or config["dataset"]["crop_size"]
    args.batch_size = args.batch_size or config["dataset"]["batch_size"]
    kinds = args.kinds if "none" in args.kinds else ["none", *args.kinds]
    with tempfile.TemporaryDirectory(prefix="ntdh-kitti-") as tmp:
        frames = args.batch_size * 2  # batches are drawn again (new crops) once these are read
        root = write_root(Path(tmp), args.scan, args.labels, args.calib, args.yaml, frames)
        dm = SemanticKittiDataModule(
            root=str(root),
            train_sequences=[0],
            val_sequences=[0],
            crop_size=tuple(args.crop),
            batch_size=args.batch_size,
            num_workers=0,
        )
        dm.setup("fit")
        points = scored_points(dm)
        times = time_kinds(kinds, dm, config, system, args.steps, args.warmup)
    print(
        f"KD step, SemanticKITTI, {model['name']} ({model['backbone']}), crop {args.crop[0]} x "
        f"{args.crop[1]}, batch {args.batch_size} ({points} scored points in the first batch), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; {args.steps} steps per "
        f"kind after {args.warmup} warm-up round(s); medians, and the median of the same "
        "round's ratios"
    )
    print(f"{'mask':<8} {'cpu ms':>9} {'ratio':>6} {'wall ms':>9} {'ratio':>6}")
    for kind in kinds:
        (wall, cpu), (base_wall, base_cpu) = times[kind], times["none"]
        print(
            f"{kind:<8} {1000 * statistics.median(cpu):9.1f} {paired_ratio(cpu, base_cpu):6.3f} "
            f"{1000 * statistics.median(wall):9.1f} {paired_ratio(wall, base_wall):6.3f}"
        )


def paired_ratio(times: list[float], base: list[float]) -> float:
    """The median over rounds of a kind's step time over the unmasked step's in that round."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


if __name__ == "__main__":
    main()
