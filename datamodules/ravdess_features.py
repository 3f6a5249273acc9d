"""RAVDESS features: log-mel spectrograms (numpy), sampled video frames (PyAV), their cache.

**Audio** (:class:`LogMelSpec`). The waveform is read from the ``.wav`` (soundfile) or from
the soundtrack of an ``.mp4`` (PyAV), mixed to mono and resampled to ``sample_rate`` (soxr, as
``librosa.resample`` does); the ``duration`` seconds from ``offset`` are kept (RAVDESS clips
open with about half a second of silence), zero-padded at the end when the clip is shorter.
Then the power mel spectrogram (power 2, ``n_fft``, ``win_length``, ``hop_length``, ``n_mels``
between ``fmin`` and ``fmax``; hann window, centred frames, Slaney mel filters) in dB with
librosa's ``power_to_db`` defaults (``ref=1``, ``amin=1e-10``, ``top_db=80``): a float32
``(1, n_mels, T)`` map with ``T = 1 + round(duration * sample_rate) // hop_length``. The
defaults (16 kHz, 25 ms windows every 10 ms, 64 mel bands, 3 s from 0.5 s) give ``(1, 64, 301)``.
:mod:`datamodules.logmel` computes it bit-identically to ``librosa.feature.melspectrogram`` and
``librosa.power_to_db`` without importing librosa, whose numba kernels took 15 s of CPU to
compile before the first clip on a fresh install (and wherever numba cannot keep its cache).

**Video** (:class:`FrameSpec`). ``n_frames`` frames are sampled evenly over the clip (frame
``floor((j + 1/2) * N / n_frames)`` of its ``N``, the centres of ``n_frames`` equal segments),
each centre-cropped to a square of ``crop`` times the shorter side, resized to ``size`` x
``size`` (PIL, bilinear with antialiasing) and stacked as ``3 * n_frames`` uint8 channels
(RGB of frame 0, then of frame 1, ...). RAVDESS films each actor from the front, centred on a
plain background, so the centre crop holds the face and shoulders; no face detector is run
(none is implemented: a face crop belongs in the pre-extracted form, see
:mod:`datamodules.ravdess_released`).

**Cache** (:func:`cached_features`). One ``.npz`` per feature kind and parameter set:
``<cache_dir>/<kind>-<key>.npz`` with ``key`` the hash of the parameters (and
:data:`FEATURE_VERSION`), holding ``ids`` (the SHA-256 of each source file's bytes: keyed by
content, not by name or size), ``features``, ``short`` (which clips were short reads),
``params`` and ``sha256``, a hash of the contents checked on every read; a cache that fails it
(or cannot be read) is moved aside to ``<cache_dir>/.bad/`` with a warning naming it and
recomputed. Only clips missing from it are computed, with a tqdm progress bar,
and the file is replaced atomically (written to a temporary file, then renamed): a reader never
sees a half-written cache. When a clip cannot be decoded, the clips computed before it are
saved and :class:`CorruptClipError` names the file, so a rerun after fixing it only computes
what is left. Processes that set up at once (sweep workers, DDP ranks) extract one at a time
under a lock file beside the cache, and the later ones find the features cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from datamodules.base import report_data_problem
from datamodules.logmel import log_mel, resample
from ntdh_core.io import atomic_write

log = logging.getLogger(__name__)

FEATURE_VERSION = 2  # bump when the extraction changes: old caches are then not reused


class CorruptClipError(ValueError):
    """A clip that cannot be decoded; names the file and what went wrong."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(
            f"{path}: {problem}. The file is damaged or incomplete: download it again "
            f"(https://zenodo.org/record/1188976) or remove it"
        )
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:  # crosses process boundaries intact
        return type(self), (self.path, self.problem)


# --- audio ------------------------------------------------------------------------------------
def read_waveform(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate, from a ``.wav`` or an ``.mp4``'s soundtrack."""
    path = Path(path)
    if path.suffix.lower() == ".wav":
        import soundfile

        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return samples.mean(axis=1), int(rate)
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise CorruptClipError(path, "no audio stream (a video-only 02 file?)")
        stream = container.streams.audio[0]
        rate = stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(stream)
            for out in resampler.resample(frame)
        ]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    if not chunks:
        raise CorruptClipError(path, "its audio stream holds no samples")
    return np.concatenate(chunks).astype(np.float32, copy=False), int(rate)


@dataclass(frozen=True)
class LogMelSpec:
    """Log-mel spectrogram parameters (module doc); calling it extracts a file's features."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None
    offset: float = 0.5
    duration: float = 3.0

    def __post_init__(self) -> None:
        if self.sample_rate < 1 or self.hop_length < 1 or self.n_mels < 1:
            raise ValueError(f"audio: sample_rate, hop_length, n_mels must be >= 1: {self}")
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"audio: need 0 < win_length <= n_fft, got {self}")
        if self.duration <= 0 or self.offset < 0:
            raise ValueError(f"audio: need duration > 0 and offset >= 0, got {self}")

    @property
    def n_samples(self) -> int:
        return round(self.duration * self.sample_rate)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.n_mels, 1 + self.n_samples // self.hop_length)

    def from_waveform(self, samples: np.ndarray, rate: int) -> np.ndarray:
        """``(1, n_mels, T)`` float32 log-mel power (dB) of mono ``samples`` at ``rate``."""
        return self._from_waveform(samples, rate)[0]

    def _from_waveform(self, samples: np.ndarray, rate: int) -> tuple[np.ndarray, bool]:
        """The features, and whether the clip was shorter than ``offset + duration`` (its end
        zero-padded: a short read, reported as a data warning)."""
        if rate != self.sample_rate:
            samples = resample(samples, rate, self.sample_rate)
        start = round(self.offset * self.sample_rate)
        segment = np.zeros(self.n_samples, dtype=np.float32)
        kept = samples[start : start + self.n_samples]
        segment[: len(kept)] = kept
        features = log_mel(
            segment,
            self.sample_rate,
            self.n_fft,
            self.hop_length,
            self.win_length,
            self.n_mels,
            self.fmin,
            self.fmax,
        )
        return features.astype(np.float32)[None], len(kept) < self.n_samples

    def __call__(self, path: str | Path) -> np.ndarray:
        return self.extract(path)[0]

    def extract(self, path: str | Path) -> tuple[np.ndarray, bool]:
        """The file's features and whether it was a short read (see :meth:`_from_waveform`)."""
        try:
            return self._from_waveform(*read_waveform(path))
        except CorruptClipError:
            raise
        except Exception as err:  # any decoder failure means the file cannot be used
            raise CorruptClipError(
                path, f"cannot read audio ({type(err).__name__}: {err})"
            ) from err


# --- video ------------------------------------------------------------------------------------
def sample_indices(n_total: int, n_frames: int) -> list[int]:
    """Frame ``floor((j + 1/2) * n_total / n_frames)`` for ``j < n_frames``: segment centres."""
    return [min(n_total - 1, math.floor((j + 0.5) * n_total / n_frames)) for j in range(n_frames)]


@dataclass(frozen=True)
class FrameSpec:
    """Frame sampling parameters (module doc); calling it extracts a file's frames."""

    n_frames: int = 3
    size: int = 128
    crop: float = 1.0

    def __post_init__(self) -> None:
        if self.n_frames < 1 or self.size < 1 or not 0 < self.crop <= 1:
            raise ValueError(f"video: need n_frames >= 1, size >= 1, 0 < crop <= 1: {self}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3 * self.n_frames, self.size, self.size)

    def crop_and_resize(self, rgb: np.ndarray) -> np.ndarray:
        """A centred square of ``crop`` times the shorter side, resized: ``(3, size, size)``."""
        from PIL import Image

        height, width = rgb.shape[:2]
        side = max(1, round(self.crop * min(height, width)))
        top, left = (height - side) // 2, (width - side) // 2
        square = Image.fromarray(np.ascontiguousarray(rgb[top : top + side, left : left + side]))
        resized = square.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)

    def __call__(self, path: str | Path) -> np.ndarray:
        return self.extract(path)[0]

    def extract(self, path: str | Path) -> tuple[np.ndarray, bool]:
        """The frames, and whether the stream held fewer frames than its header announced
        (the last frame repeated: a short read, reported as a data warning)."""
        try:
            frames, short = self._decode(Path(path))
        except CorruptClipError:
            raise
        except Exception as err:  # any decoder failure means the file cannot be used
            raise CorruptClipError(
                path, f"cannot read video ({type(err).__name__}: {err})"
            ) from err
        return np.concatenate([self.crop_and_resize(f) for f in frames]), short

    def _decode(self, path: Path) -> tuple[list[np.ndarray], bool]:
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CorruptClipError(path, "no video stream")
            n_total = container.streams.video[0].frames
        if n_total <= 0:  # the container does not say: count the frames first
            with av.open(str(path)) as container:
                n_total = sum(1 for _ in container.decode(video=0))
        if n_total <= 0:
            raise CorruptClipError(path, "its video stream holds no frames")
        wanted = sample_indices(n_total, self.n_frames)
        picked: dict[int, np.ndarray] = {}
        last = None
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                last = frame
                if i in wanted:
                    picked[i] = frame.to_ndarray(format="rgb24")
                if i >= wanted[-1]:
                    break
        if last is None:
            raise CorruptClipError(path, "its video stream holds no frames")
        if len(picked) < len(set(wanted)):  # fewer frames than the header announced
            tail = last.to_ndarray(format="rgb24")
            return [picked.get(i, tail) for i in wanted], True
        return [picked[i] for i in wanted], False


# --- the cache --------------------------------------------------------------------------------
def feature_key(kind: str, spec: Any) -> str:
    """The hash naming a cache file: the feature kind, its parameters and the code version."""
    params = {"kind": kind, "version": FEATURE_VERSION, **asdict(spec)}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


_CONTENT_IDS: dict[tuple[str, int, int], str] = {}


def source_id(path: Path, root: Path | None = None) -> str:
    """A source file's identity in the cache: the SHA-256 of its bytes, so a file replaced by
    another of the same size (or moved) is recognised by what it holds, not where it lies.

    Hashed once per process and file version (path, size, modification time); ``root`` is
    accepted for callers of the former path-based identity and is not used.
    """
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _CONTENT_IDS:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _CONTENT_IDS[memo] = digest.hexdigest()
    return _CONTENT_IDS[memo]


def cache_path(cache_dir: str | Path, kind: str, spec: Any) -> Path:
    return Path(cache_dir) / f"{kind}-{feature_key(kind, spec)}.npz"


def _content_digest(ids: np.ndarray, features: np.ndarray, short: np.ndarray) -> str:
    """SHA-256 over the ids, the features and the short-read flags: written with the cache,
    checked when it is read."""
    digest = hashlib.sha256("\n".join(ids.tolist()).encode())
    digest.update(np.ascontiguousarray(features).tobytes())
    digest.update(np.ascontiguousarray(short, dtype=bool).tobytes())
    return digest.hexdigest()


def quarantine(path: Path, reason: str) -> Path:
    """Move a bad cache file aside to ``<its folder>/.bad/`` with a warning naming it, so that
    it is rebuilt (and can still be inspected)."""
    bad = path.parent / ".bad" / path.name
    bad.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, bad)
    log.warning("feature cache %s is bad (%s): moved to %s; recomputing", path, reason, bad)
    return bad


def read_cache(path: Path, spec: Any) -> dict[str, tuple[np.ndarray, bool]]:
    """``{source id: (features, short read)}`` from a cache file; empty when there is none, or
    when it is unreadable, fails its content hash or holds other parameters (then it is
    moved aside, see :func:`quarantine`)."""
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, features, short = data["ids"], data["features"], data["short"]
            params, digest = str(data["params"]), str(data["sha256"])
        if _content_digest(ids, features, short) != digest:
            raise ValueError("content hash mismatch")
        if json.loads(params) != json.loads(json.dumps(asdict(spec))):
            raise ValueError(f"holds features for {params}, not {asdict(spec)}")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        quarantine(path, f"{type(err).__name__}: {err}")
        return {}
    return {i: (f, bool(s)) for i, f, s in zip(ids.tolist(), features, short, strict=True)}


def write_cache(path: Path, entries: dict[str, tuple[np.ndarray, bool]], spec: Any) -> None:
    """Write the cache atomically (a temporary file in the same folder, then a rename), with
    the content hash that :func:`read_cache` checks."""
    ids = np.array(sorted(entries))
    features = np.stack([entries[i][0] for i in ids.tolist()])
    short = np.array([entries[i][1] for i in ids.tolist()], dtype=bool)

    def save(tmp: Path) -> None:
        with tmp.open("xb") as f:
            np.savez(
                f,
                ids=ids,
                features=features,
                short=short,
                params=np.array(json.dumps(asdict(spec))),
                sha256=np.array(_content_digest(ids, features, short)),
            )

    atomic_write(path, save)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (POSIX ``flock``): one extraction per cache file at
    a time, when several processes (sweep workers, DDP ranks) set up at once. Without
    ``fcntl`` (Windows) concurrent extractions are only wasteful: each writes a complete file.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_features(
    files: Sequence[Path],
    root: Path,
    spec: LogMelSpec | FrameSpec,
    kind: str,
    cache_dir: str | Path,
    workers: int = 0,
) -> np.ndarray:
    """``spec(f)`` for every file, stacked; read from the cache, computing what is missing.

    ``spec`` is a :class:`LogMelSpec` or :class:`FrameSpec` (a dataclass of the parameters,
    which keys the cache, and the extractor); ``workers > 0`` extracts in that many processes.
    Clips that were short reads (padded audio, repeated last frame) are reported as a data
    warning ``short_reads`` on every load, cached or not (an error under ``--strict``).
    See the module doc for the file and its atomic replacement.
    """
    path = cache_path(cache_dir, kind, spec)
    ids = [source_id(f, root) for f in files]
    entries = read_cache(path, spec)
    if not all(i in entries for i in ids):
        with _exclusive(path.with_name(f".{path.name}.lock")):
            entries = read_cache(path, spec)  # another process may have filled it meanwhile
            entries.update(_compute(path, spec, kind, files, ids, entries, workers))
    short = [f for f, i in zip(files, ids, strict=True) if entries[i][1]]
    if short:
        shown = ", ".join(str(f) for f in short[:5]) + (", ..." if len(short) > 5 else "")
        what = "zero-padded audio" if isinstance(spec, LogMelSpec) else "last frame repeated"
        report_data_problem(
            "short_reads",
            f"RAVDESS {kind}: {len(short)} clip(s) shorter than the features need "
            f"({what}): {shown}",
            len(short),
        )
    return np.stack([entries[i][0] for i in ids])


def _compute(
    path: Path,
    spec: LogMelSpec | FrameSpec,
    kind: str,
    files: Sequence[Path],
    ids: Sequence[str],
    entries: dict[str, tuple[np.ndarray, bool]],
    workers: int,
) -> dict[str, tuple[np.ndarray, bool]]:
    """Extract the clips missing from ``entries`` and save the cache, also when a clip fails
    (what was computed before it is kept)."""
    todo = list({i: f for i, f in zip(ids, files, strict=True) if i not in entries}.items())
    computed: dict[str, tuple[np.ndarray, bool]] = {}
    bar = tqdm(total=len(todo), desc=f"RAVDESS {kind} features", unit="clip")
    try:
        with contextlib.ExitStack() as stack:
            if workers > 0:
                pool = stack.enter_context(ProcessPoolExecutor(workers))
                results = pool.map(spec.extract, [f for _, f in todo], chunksize=4)
            else:
                results = map(spec.extract, [f for _, f in todo])
            for (source, _), extracted in zip(todo, results, strict=False):
                computed[source] = extracted
                bar.update()
    finally:
        bar.close()
        if computed:  # keep what was computed, even when a later clip failed
            write_cache(path, {**entries, **computed}, spec)
    return computed
