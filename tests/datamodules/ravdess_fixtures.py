"""Tiny RAVDESS fixtures in the dataset's real formats and names.

* ``03-*.wav``: 16-bit PCM mono at 48 kHz (soundfile), like the published audio-only files.
* ``01-*.mp4`` / ``02-*.mp4``: H.264 video (libx264, yuv420p) encoded with PyAV; the
  audio-video ``01`` files carry an AAC soundtrack, the video-only ``02`` files none.
* ``Actor_XX/`` folders and seven-field names ``MM-VV-EE-II-SS-RR-AA``.

Each utterance gets a *code*: its frames are uniform grey at :func:`grey_level` of the code,
its audio a sine tone at :func:`tone_hz` of the code, so a test can tell from a sample's two
inputs whether they came from one utterance. The pre-extracted form of the authors' release
(``aud_features/*.npy``, ``vid_features/*``, ``data_file/spa_*.csv``) is written by
:func:`write_released_features`.

Run as a script to write a fake data root: ``python tests/datamodules/ravdess_fixtures.py DIR``.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 48000
FPS = 30
ACTORS = (1, 5, 9, 10)  # fold 0: test 1-4, validation 5-8, training 9-24
# (emotion, intensity, statement, repetition) of the utterances written per actor
UTTERANCES = ((1, 1, 1, 1), (3, 2, 1, 2), (5, 1, 2, 1), (8, 2, 2, 2))


def ravdess_name(
    modality: int,
    emotion: int,
    actor: int,
    intensity: int = 1,
    statement: int = 1,
    repetition: int = 1,
    vocal: int = 1,
) -> str:
    """A RAVDESS file name, with the extension of its modality."""
    fields = (modality, vocal, emotion, intensity, statement, repetition, actor)
    return "-".join(f"{v:02d}" for v in fields) + (".wav" if modality == 3 else ".mp4")


def grey_level(code: int) -> int:
    """The grey level of an utterance's frames: 24, 38, ... (16 codes fit in 0..255)."""
    return 24 + 14 * code


def tone_hz(code: int) -> float:
    """The tone of an utterance: 16 codes evenly spaced on the mel scale, 250 Hz .. 6 kHz."""
    low, high = (2595 * np.log10(1 + f / 700) for f in (250.0, 6000.0))
    mel = low + (high - low) * code / 15
    return float(700 * (10 ** (mel / 2595) - 1))


def tone(hz: float, seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, rate, subtype="PCM_16")
    return path


def write_mp4(
    path: Path,
    frames: Sequence[np.ndarray],
    soundtrack: np.ndarray | None = None,
    rate: int = RATE,
    fps: int = FPS,
) -> Path:
    """Encode uint8 RGB ``frames`` (H, W, 3; even H and W) as H.264, plus an AAC soundtrack."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = None
        if soundtrack is not None:
            audio = container.add_stream("aac", rate=rate)
            audio.layout = "mono"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            size = audio.codec_context.frame_size or 1024
            for start in range(0, len(soundtrack), size):
                chunk = soundtrack[start : start + size][None]
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path


def grey_frames(level: int, n: int = 8, size: tuple[int, int] = (32, 32)) -> list[np.ndarray]:
    return [np.full((*size, 3), level, dtype=np.uint8) for _ in range(n)]


def librosa_log_mel(spec, samples: np.ndarray, rate: int) -> np.ndarray:
    """``spec``'s features as the suite computed them with librosa before
    :mod:`datamodules.logmel`: the reference that module is checked against, bit for bit."""
    import librosa

    if rate != spec.sample_rate:
        samples = librosa.resample(samples, orig_sr=rate, target_sr=spec.sample_rate)
    start = round(spec.offset * spec.sample_rate)
    segment = np.zeros(spec.n_samples, dtype=np.float32)
    kept = samples[start : start + spec.n_samples]
    segment[: len(kept)] = kept
    mel = librosa.feature.melspectrogram(
        y=segment,
        sr=spec.sample_rate,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        win_length=spec.win_length,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.fmax,
        power=2.0,
    )
    return librosa.power_to_db(mel).astype(np.float32)[None]


@dataclass(frozen=True)
class FixtureClip:
    key: str
    actor: int
    label: int
    code: int


def write_utterance(
    ravdess_dir: Path,
    actor: int,
    fields: tuple[int, int, int, int],
    code: int,
    modalities: Sequence[int] = (1, 2, 3),
    seconds: float = 0.6,
    n_frames: int = 8,
) -> FixtureClip:
    """The ``modalities`` versions (01, 02, 03) of one utterance, coded by ``code``."""
    emotion, intensity, statement, repetition = fields
    folder = ravdess_dir / f"Actor_{actor:02d}"
    sound = tone(tone_hz(code), seconds)
    frames = grey_frames(grey_level(code), n_frames)
    for modality in modalities:
        path = folder / ravdess_name(modality, emotion, actor, intensity, statement, repetition)
        if modality == 3:
            write_wav(path, sound)
        else:
            write_mp4(path, frames, sound if modality == 1 else None)
    key = "-".join(f"{v:02d}" for v in (1, emotion, intensity, statement, repetition, actor))
    return FixtureClip(key, actor, emotion - 1, code)


def write_ravdess(
    ravdess_dir: Path,
    actors: Sequence[int] = ACTORS,
    utterances: Sequence[tuple[int, int, int, int]] = UTTERANCES,
) -> dict[str, FixtureClip]:
    """Every utterance of every actor in all three versions; ``{key: clip}``."""
    clips = {}
    for i, actor in enumerate(actors):
        for j, fields in enumerate(utterances):
            clip = write_utterance(ravdess_dir, actor, fields, code=i * len(utterances) + j)
            clips[clip.key] = clip
    return clips


def write_released_features(
    features_dir: Path,
    sizes: dict[str, int] | None = None,
    audio_shape: tuple[int, int] = (40, 64),
    image_shape: tuple[int, int] = (24, 48),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The release's pre-extracted form; returns the labels per split.

    Audio files carry RAVDESS names (so their labels are checked against the names); every
    other image is a ``.png``, the rest ``.npy``.
    """
    sizes = sizes or {"spa_dl.csv": 12, "spa_val.csv": 4, "spa_test.csv": 4}
    from PIL import Image

    rng = np.random.default_rng(seed)
    (features_dir / "aud_features").mkdir(parents=True, exist_ok=True)
    (features_dir / "vid_features").mkdir(parents=True, exist_ok=True)
    (features_dir / "data_file").mkdir(parents=True, exist_ok=True)
    labels, n = {}, 0
    for csv_name, size in sizes.items():
        rows = []
        for _ in range(size):
            emotion, actor = int(rng.integers(1, 9)), n % 24 + 1
            audio = ravdess_name(3, emotion, actor, repetition=n // 24 % 2 + 1)
            audio = audio.replace(".wav", ".npy")
            np.save(features_dir / "aud_features" / audio, rng.normal(size=audio_shape))
            pixels = rng.integers(0, 256, (*image_shape, 3), dtype=np.uint8)
            image = f"{Path(audio).stem}_{n}" + (".png" if n % 2 else ".npy")
            if n % 2:
                Image.fromarray(pixels).save(features_dir / "vid_features" / image)
            else:
                np.save(features_dir / "vid_features" / image, pixels)
            rows.append((audio, image, emotion - 1))
            n += 1
        with open(features_dir / "data_file" / csv_name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["audio", "image", "label"])
            writer.writerows(rows)
        labels[csv_name] = np.array([r[2] for r in rows])
    return labels


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "fake_data")
    write_ravdess(root / "ravdess")
    print(f"wrote a fake RAVDESS under {root / 'ravdess'}")
