"""Resampling and log-mel spectrograms in numpy: librosa's numbers without importing librosa.

Importing librosa's ``util`` and ``core`` modules compiles about twenty numba kernels
(``localmax``, ``localmin``, ``peak_pick``, ``zero_crossings``, ``abs2``, ``phasor``, parabolic
interpolation) that the log-mel pipeline never calls: 15 s of CPU on the 2-core benchmark
machine with an empty numba cache (71 s of wall time was seen on a busy one), before the first
RAVDESS clip (``benchmarks/ravdess_cold_start.py``). This module computes the same features
with numpy, scipy's window and soxr (librosa's resampler), following librosa 0.11's arithmetic
step for step (the same dtypes, operation order and memory layout), so the maps are
bit-identical to

    y = librosa.resample(y, orig_sr=rate, target_sr=sr)          # soxr_hq, fix=True
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=..., hop_length=..., win_length=...,
                                       n_mels=..., fmin=..., fmax=..., power=2.0)
    librosa.power_to_db(S)                                        # ref=1, amin=1e-10, top_db=80

(hann window, centred frames zero-padded, Slaney mel scale and area normalisation).
``tests/datamodules/test_logmel.py`` checks the equality against librosa itself.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

AMIN = 1e-10  # power_to_db's floor
TOP_DB = 80.0  # power_to_db's dynamic range


def _check_audio(samples: np.ndarray) -> None:
    """librosa's ``valid_audio``: floating point, one dimension, finite."""
    if not np.issubdtype(samples.dtype, np.floating) or samples.ndim != 1:
        raise ValueError(f"audio must be 1-d floating point, got {samples.dtype} {samples.shape}")
    if not np.isfinite(samples).all():
        raise ValueError("audio buffer is not finite everywhere")


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``librosa.resample(samples, orig_sr=rate, target_sr=target)``: soxr at its ``HQ``
    quality, then cut or zero-padded to ``ceil(len * target / rate)`` samples, in the input's
    dtype."""
    _check_audio(samples)
    if rate == target:
        return samples
    import soxr

    n_out = math.ceil(samples.shape[-1] * (float(target) / rate))
    out = np.asarray(soxr.resample(samples, rate, target, quality="soxr_hq"))
    if len(out) > n_out:
        out = out[:n_out]
    elif len(out) < n_out:
        out = np.pad(out, (0, n_out - len(out)))
    return np.asarray(out, dtype=samples.dtype)


# --- the Slaney mel scale (librosa's default, htk=False) ------------------------------------
_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0  # log-Hz per mel above 1 kHz


def hz_to_mel(hz: float) -> float:
    """Linear below 1 kHz, logarithmic above."""
    mel = hz / _F_SP
    if hz >= _MIN_LOG_HZ:
        mel = _MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOGSTEP
    return mel


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """The inverse of :func:`hz_to_mel`, elementwise."""
    hz = _F_SP * mels
    high = mels >= _MIN_LOG_MEL
    hz[high] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[high] - _MIN_LOG_MEL))
    return hz


def mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """``librosa.filters.mel``: ``(n_mels, 1 + n_fft // 2)`` float32 triangles between
    ``n_mels + 2`` mel-spaced edges, each scaled to unit area (``2 / width`` in Hz)."""
    fmax = float(sr) / 2 if fmax is None else fmax
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bins = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, bins)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling)).astype(np.float32)
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # float32 rows, as librosa rounds
    if not np.all((edges[:-2] == 0) | (weights.max(axis=1) > 0)):
        warnings.warn(
            f"empty mel filters: {n_mels} bands are too many for sr={sr}, n_fft={n_fft}, "
            f"fmax={fmax}; some bands will stay silent",
            stacklevel=2,
        )
    return weights


def power_spectrogram(y: np.ndarray, n_fft: int, hop_length: int, win_length: int) -> np.ndarray:
    """``|librosa.stft(y, ...)| ** 2``: periodic hann window of ``win_length`` centred in
    ``n_fft``, frames centred on every ``hop_length``-th sample (``n_fft // 2`` zeros padded
    at both ends). ``(1 + n_fft // 2, 1 + len(y) // hop_length)``, float32 for float32 ``y``.
    """
    from scipy.signal import get_window

    _check_audio(y)
    window = get_window("hann", win_length, fftbins=True)
    left = (n_fft - win_length) // 2
    window = np.pad(window, (left, n_fft - win_length - left))
    padded = np.pad(y, n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    # librosa multiplies in float64 (the window's dtype), transforms, stores complex64
    spectrum = np.fft.rfft(window * frames, axis=-1).astype(np.result_type(y.dtype, np.complex64))
    return (np.abs(spectrum) ** 2.0).T  # (bins, frames), Fortran-ordered like librosa's


def log_mel(
    y: np.ndarray,
    sr: int,
    n_fft: int,
    hop_length: int,
    win_length: int,
    n_mels: int,
    fmin: float,
    fmax: float | None,
) -> np.ndarray:
    """``power_to_db(melspectrogram(y, power=2))`` with librosa's defaults: ``(n_mels, T)``
    dB of power over 1, floored at ``1e-10`` and at 80 dB below the map's maximum."""
    power = power_spectrogram(y, n_fft, hop_length, win_length)
    mel = np.einsum(
        "...ft,mf->...mt", power, mel_filters(sr, n_fft, n_mels, fmin, fmax), optimize=True
    )
    log_spec = 10.0 * np.log10(np.maximum(AMIN, mel))
    return np.maximum(log_spec, log_spec.max() - TOP_DB)
