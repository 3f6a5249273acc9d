"""RAVDESS audio features: the first clip in a fresh process (imports and JIT included) and the
clips after it.

Each measurement is a fresh Python process that imports ``datamodules.ravdess_features`` and
extracts the log-mel features of two clips, one after the other, with ``--pipelines``:

* ``suite``: ``LogMelSpec().extract``, the suite's extractor as it is in this tree;
* ``librosa``: the same waveform through ``librosa.resample``, ``feature.melspectrogram`` and
  ``power_to_db`` (``ravdess_fixtures.librosa_log_mel``, what the suite ran before
  :mod:`datamodules.logmel`). Importing librosa compiles its numba kernels.

and two states of numba's compile cache (``NUMBA_CACHE_DIR`` set for the child):

* ``cold``: an empty cache folder, as on a fresh install (or where numba cannot write one);
* ``cached``: the folder a previous process of the same pipeline filled.

Per process it reports the seconds (CPU: ``time.process_time``, and wall) of the import, of the
first clip (its lazy imports and any compilation included) and of the second clip (warm), and
the whole process as its parent saw it (interpreter start to exit, CPU from ``getrusage``).
Medians over ``--repeats`` processes. The clips are 3.8 s, 48 kHz, 16-bit mono ``.wav`` files
with RAVDESS names, written with the ``wave`` module (``--wavs DIR`` reads the first two
``Actor_*/03-*.wav`` of a real RAVDESS folder instead); the features are the defaults,
``(1, 64, 301)``. With both pipelines the two feature maps are compared, and must be equal.

    python benchmarks/ravdess_cold_start.py [--quick] [--repeats 3] [--pipelines suite librosa]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RATE = 48000


def write_clips(folder: Path, seconds: float = 3.8) -> list[Path]:
    """Two speech-like clips (a gliding tone in noise) in RAVDESS's audio-only format."""
    rng = np.random.default_rng(0)
    paths = []
    for emotion in (1, 5):
        t = np.arange(round(seconds * RATE)) / RATE
        pitch = 150 + 40 * emotion + 30 * np.sin(2 * np.pi * 2 * t)
        y = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / RATE) + 0.02 * rng.normal(size=t.size)
        path = folder / "Actor_01" / f"03-01-{emotion:02d}-01-01-01-01.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes((np.clip(y, -1, 1) * 32767).astype("<i2").tobytes())
        paths.append(path)
    return paths


def child(pipeline: str, clips: list[str], save: str | None) -> None:
    """In the fresh process: time the import, then each clip; print one JSON line."""
    marks = [(time.perf_counter(), time.process_time())]
    sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "datamodules")]
    from datamodules.ravdess_features import LogMelSpec, read_waveform

    spec = LogMelSpec()
    if pipeline == "suite":
        extract = spec
    else:
        from ravdess_fixtures import librosa_log_mel

        def extract(path: str) -> np.ndarray:
            return librosa_log_mel(spec, *read_waveform(path))

    marks.append((time.perf_counter(), time.process_time()))
    features = []
    for clip in clips:
        features.append(extract(clip))
        marks.append((time.perf_counter(), time.process_time()))
    if save:
        np.save(save, np.stack(features))
    steps = ("import", "first clip", "second clip")
    times = {
        name: {"wall": b[0] - a[0], "cpu": b[1] - a[1]}
        for name, a, b in zip(steps, marks[:-1], marks[1:], strict=True)
    }
    print(json.dumps(times))


def run_child(pipeline: str, clips: list[Path], numba_dir: Path, save: Path) -> dict:
    """One fresh process; its step times and its whole life as the parent saw it."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_dir)}
    command = [sys.executable, __file__, "--child", pipeline, "--save", str(save)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [*command, *map(str, clips)], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{pipeline} child failed:\n{done.stderr[-3000:]}")
    times = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    times["process"] = {"wall": wall, "cpu": cpu}
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, the suite only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipelines", nargs="+", default=["suite", "librosa"])
    parser.add_argument("--wavs", type=Path, help="a RAVDESS folder: time its first two wavs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("clips", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.clips, args.save)
        return
    repeats, pipelines = (1, ["suite"]) if args.quick else (args.repeats, args.pipelines)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.wavs:
            clips = sorted(args.wavs.glob("Actor_*/03-*.wav"))[:2]
            if len(clips) < 2:
                raise SystemExit(f"{args.wavs}: fewer than two Actor_*/03-*.wav files")
        else:
            clips = write_clips(tmp / "ravdess")
        results: dict[tuple[str, str], list[dict]] = {}
        for r in range(repeats):
            for pipeline in pipelines:
                numba_dir = tmp / f"numba-{pipeline}-{r}"  # empty: a cold compile cache
                for state in ("cold", "cached"):  # "cached" reuses what "cold" wrote
                    save = tmp / f"{pipeline}.npy"
                    times = run_child(pipeline, clips, numba_dir, save)
                    results.setdefault((pipeline, state), []).append(times)
                    first = times["first clip"]
                    print(
                        f"  repeat {r + 1} {pipeline:8s} {state:6s}: first clip "
                        f"{first['cpu']:.2f} s CPU ({first['wall']:.2f} wall)",
                        flush=True,
                    )
        if len(pipelines) > 1:
            maps = [np.load(tmp / f"{p}.npy") for p in pipelines]
            same = all(np.array_equal(maps[0], m) for m in maps[1:])
            print(f"feature maps of {' and '.join(pipelines)} identical: {same}")

    print(f"\nmedian of {repeats} fresh process(es), seconds CPU (wall):")
    steps = ("import", "first clip", "second clip", "process")
    print(f"| pipeline | numba cache | {' | '.join(steps)} |")
    print("|---|---|" + "---|" * len(steps))
    for (pipeline, state), runs in results.items():
        cells = []
        for step in steps:
            cpu = statistics.median(t[step]["cpu"] for t in runs)
            wall = statistics.median(t[step]["wall"] for t in runs)
            cells.append(f"{cpu:.2f} ({wall:.2f})")
        print(f"| {pipeline} | {state} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
