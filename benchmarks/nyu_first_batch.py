"""NYU: time to open each dataset and read its first training batch, and the peak memory.

For ``nyu_ssc`` (DDRNet's ``.npz``) and ``nyu_depth`` (the labelled v7.3 ``.mat``) it measures,
each in a fresh process so that the peak resident memory is that dataset's alone:

* ``open``: building the datamodule (SSC: every file's keys and shapes from the ``.npz``
  headers; depth: the ``.mat``'s datasets and the official split);
* ``setup``: the splits' datasets (depth: the training depth statistics, one pass over the
  training frames);
* ``first batch``: ``next(iter(train_dataloader()))`` in the main process;
* the peak resident memory above the process's after imports, and its ratio to the batch's
  own size.

Without ``--ssc-root`` / ``--depth-root`` it writes frames of the real sizes (480 x 640
images; SSC: the 60 x 36 x 60 grid and the 240 x 144 x 240 TSDF) with the test fixtures'
writers into a temporary folder; with them it reads the real data.

    python benchmarks/nyu_first_batch.py
    python benchmarks/nyu_first_batch.py --ssc-root data/nyu_ssc --depth-root data/nyu_depth_v2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "datamodules"))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(name: str, root: str, batch_size: int) -> dict[str, float]:
    """Open ``name`` at ``root``, set it up, read one training batch; times and memory."""
    import torch

    from datamodules import build_datamodule

    base = _peak_mb()
    start = time.perf_counter()
    dm = build_datamodule(name, root=root, batch_size=batch_size, num_workers=0)
    opened = time.perf_counter()
    dm.setup("fit")
    ready = time.perf_counter()
    batch = next(iter(dm.train_dataloader()))
    done = time.perf_counter()
    batch_mb = sum(v.numel() * v.element_size() for v in batch.values()) / 2**20
    extra = _peak_mb() - base
    return {
        "open_s": opened - start,
        "setup_s": ready - opened,
        "first_batch_s": done - ready,
        "total_s": done - start,
        "peak_mb": extra,
        "batch_mb": batch_mb,
        "batch": {k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)},
    }


def write_real_size(folder: Path, frames: int) -> tuple[Path, Path]:
    """Real-size fixture frames: SSC ``.npz`` and a labelled ``.mat`` with its meta files."""
    import numpy as np
    import nyu_fixtures as fx

    ssc = folder / "nyu_ssc"
    for split, n, offset in (("train", frames, 0), ("test", 2, 1000)):
        (ssc / split).mkdir(parents=True)
        for i in range(n):
            arrays = fx.ssc_frame(offset + i, grid=(60, 36, 60), scale=4, image=(480, 640))
            np.savez(ssc / split / f"NYU{offset + i:04d}_0000_voxels.npz", **arrays)
    depth = folder / "nyu_depth_v2"
    arrays = fx.labelled_arrays(frames + 2, 480, 640)
    fx.write_labelled_mat(depth / "nyu_depth_v2_labeled.mat", arrays)
    fx.write_splits(depth / "splits.mat", list(range(1, frames + 1)), [frames + 1, frames + 2])
    fx.write_mapping(depth / "classMapping40.mat", (np.arange(894) % 40) + 1)
    return ssc, depth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ssc-root", default=None, help="real NYU SSC (.npz) root")
    parser.add_argument("--depth-root", default=None, help="real NYU Depth v2 root")
    parser.add_argument("--frames", type=int, default=8, help="training frames to write")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--measure", nargs=2, metavar=("NAME", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child process
        print(json.dumps(measure(*args.measure, args.batch_size)))
        return
    with tempfile.TemporaryDirectory(prefix="ntdh-nyu-bench-") as tmp:
        roots = {"nyu_ssc": args.ssc_root, "nyu_depth": args.depth_root}
        if None in roots.values():
            start = time.perf_counter()
            ssc, depth = write_real_size(Path(tmp), args.frames)
            print(f"wrote {args.frames} real-size frames in {time.perf_counter() - start:.1f} s")
            roots = {"nyu_ssc": args.ssc_root or ssc, "nyu_depth": args.depth_root or depth}
        for name, root in roots.items():
            cmd = [sys.executable, __file__, "--measure", name, str(root)]
            cmd += ["--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{name}: open {r['open_s']:.3f} s, setup {r['setup_s']:.3f} s, first batch "
                f"{r['first_batch_s']:.3f} s (total {r['total_s']:.3f} s); peak memory "
                f"+{r['peak_mb']:.0f} MB for a {r['batch_mb']:.1f} MB batch "
                f"(ratio {r['peak_mb'] / r['batch_mb']:.1f}); batch {r['batch']}"
            )


if __name__ == "__main__":
    main()
