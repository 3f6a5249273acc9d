"""RAVDESS log-mel features without librosa: bit-identical to librosa's pipeline, no numba.

The reference is ``ravdess_fixtures.librosa_log_mel`` (librosa's resample, melspectrogram and
power_to_db, what the suite ran before :mod:`datamodules.logmel`). Equality is exact, so the
features already cached on disk (``FEATURE_VERSION`` 2) stay valid; should a librosa upgrade
break it, the reference moved, not the suite's features: compare the size of the difference.
"""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datamodules.logmel import mel_filters
from datamodules.ravdess_features import FEATURE_VERSION, CorruptClipError, LogMelSpec

sys.path.insert(0, str(Path(__file__).parent))
import ravdess_fixtures as fx

ROOT = Path(__file__).resolve().parents[2]
SHARED_WAVS = sorted((ROOT.parent / "shared" / "data" / "ravdess").glob("Actor_*/03-*.wav"))

SPECS = {
    "defaults": LogMelSpec(),
    "tests": LogMelSpec(n_mels=32, offset=0.0, duration=0.5),
    "22k, fmin/fmax": LogMelSpec(22050, 1024, 1024, 256, 128, fmin=50.0, fmax=8000.0),
    "48k, no resampling": LogMelSpec(48000, 2048, 1200, 480, 80, duration=3.3),
    "odd window, padded": LogMelSpec(16000, 400, 399, 100, 40, offset=0.1, duration=5.0),
}


def _speech_like(rate: int, seconds: float, seed: int) -> np.ndarray:
    """A gliding tone in noise with a silent lead-in, quantised to 16 bits like a wav."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    pitch = 180 + 60 * np.sin(2 * np.pi * 1.5 * t)
    y = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / rate) + 0.02 * rng.normal(size=t.size)
    y[: rate // 4] = 0
    return (np.round(y * 32767) / 32768).astype(np.float32)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_features_are_bit_identical_to_librosa(name, rate):
    spec = SPECS[name]
    samples = _speech_like(rate, 3.7, seed=rate)
    ours = spec.from_waveform(samples, rate)
    assert ours.dtype == np.float32 and ours.shape == spec.shape
    np.testing.assert_array_equal(ours, fx.librosa_log_mel(spec, samples, rate))
    assert ours.max() - ours.min() <= 80 and np.ptp(ours[0].mean(axis=1)) > 10  # not all floor


@pytest.mark.skipif(not SHARED_WAVS, reason="no shared RAVDESS wavs")
@pytest.mark.parametrize("name", ["defaults", "48k, no resampling"])
def test_real_ravdess_wavs_are_bit_identical_to_librosa(name):
    from datamodules.ravdess_features import read_waveform

    for wav in SHARED_WAVS:
        samples, rate = read_waveform(wav)
        ours = SPECS[name].from_waveform(samples, rate)
        np.testing.assert_array_equal(ours, fx.librosa_log_mel(SPECS[name], samples, rate))


def test_an_mp4_soundtrack_matches_librosa_too(tmp_path):
    from datamodules.ravdess_features import read_waveform

    path = fx.write_mp4(tmp_path / "01.mp4", fx.grey_frames(50, 4), _speech_like(48000, 1.0, 1))
    samples, rate = read_waveform(path)
    spec = SPECS["tests"]
    np.testing.assert_array_equal(spec(path), fx.librosa_log_mel(spec, samples, rate))


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax"),
    [(16000, 512, 64, 0.0, None), (22050, 2048, 128, 30.0, 11025.0), (16000, 256, 128, 0, None)],
)
def test_the_filterbank_is_librosas_and_warns_on_empty_bands(sr, n_fft, n_mels, fmin, fmax):
    import warnings

    import librosa

    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(mel_filters(sr, n_fft, n_mels, fmin, fmax), expected)
    assert bool(ours) == bool(theirs) == (n_fft == 256)  # 128 bands over 129 bins: empty ones


def test_unchanged_values_keep_the_feature_version_and_cache_key():
    assert FEATURE_VERSION == 2  # bit-identical to the librosa features cached before


def test_a_non_finite_waveform_is_a_corrupt_clip(tmp_path):
    import soundfile

    samples = _speech_like(48000, 1.0, 2)
    samples[1000] = np.nan
    path = tmp_path / "03-01-01-01-01-01-01.wav"
    soundfile.write(str(path), samples, 48000, subtype="FLOAT")
    with pytest.raises(CorruptClipError, match="not finite"):
        SPECS["tests"].extract(path)


def test_the_resampled_length_is_librosas():
    from datamodules.logmel import resample

    for n in (1, 47, 48000, 177_123):
        y = np.zeros(n, dtype=np.float32)
        assert len(resample(y, 48000, 16000)) == math.ceil(n / 3)
        assert len(resample(y, 44100, 16000)) == math.ceil(n * 16000 / 44100)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_datamodule_imports_librosa_or_numba():
    """Importing librosa's util/core compiles numba kernels: 15 s CPU on a cold cache."""
    importers = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & {"librosa", "numba"})
        for path in (ROOT / "datamodules").rglob("*.py")
    }
    assert {k: v for k, v in importers.items() if v} == {}


@pytest.mark.slow  # a fresh interpreter imports torch: about 5 s CPU
def test_extracting_a_clip_in_a_fresh_process_loads_no_numba(tmp_path):
    """What the static check above cannot see: a dependency that pulls numba in."""
    wav = fx.write_wav(tmp_path / "03-01-01-01-01-01-01.wav", _speech_like(48000, 1.0, 3))
    script = (
        "import sys\n"
        "from datamodules.ravdess_features import LogMelSpec\n"
        f"LogMelSpec(duration=0.5)({str(wav)!r})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numba'"
        " or m.startswith(('librosa.core', 'librosa.util', 'librosa.feature'))))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
