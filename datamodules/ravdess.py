"""RAVDESS: audio teaches video (paper Sec. IV-A-3, IV-B; Tables I, III, Figs. 7b, 9b).

The teacher hears the utterance (a log-mel spectrogram) and the student sees the face (a few
frames); ``teacher="video"`` swaps them. The paper's 1440 clips are the speech recordings of
24 actors, 8 emotions (``vocal_channel="speech"``; ``"song"`` and ``"both"`` exist too).

**Files.** Under the data root (``root``, default ``$NTDH_DATA``, else ``./data``) the folder
``ravdess/`` (or ``ravdess_dir``) holds the dataset as published on Zenodo
(https://zenodo.org/record/1188976): ``Audio_Speech_Actors_01-24.zip`` (``03-*.wav``) and
``Video_Speech_Actor_XX.zip`` (``01-*.mp4`` with sound, ``02-*.mp4`` without), extracted into
``Actor_XX/`` folders. Names, pairing, the choice of the audio (``audio_source``: the ``.wav``
or the soundtrack of the ``01`` video) and the actor folds are in
:mod:`datamodules.ravdess_files`; a file whose name breaks the convention is logged and
skipped.

**Features** (:mod:`datamodules.ravdess_features`) are computed once, with a progress bar,
into ``cache_dir`` (default ``$NTDH_CACHE/ravdess``, else ``./cache/ravdess``; an experiment's
``--cache-dir`` sets ``$NTDH_CACHE``), keyed by the files' contents and by their
parameters: ``audio`` (:class:`~datamodules.ravdess_features.LogMelSpec`: ``sample_rate``,
``n_fft``, ``win_length``, ``hop_length``, ``n_mels``, ``fmin``, ``fmax``, ``offset``,
``duration``) and ``video`` (:class:`~datamodules.ravdess_features.FrameSpec`: ``n_frames``,
``size``, ``crop``), each a mapping of overrides. The defaults give audio ``(1, 64, 301)`` and
video ``(9, 128, 128)`` (three RGB frames stacked). ``extract_workers`` processes extract in
parallel. All of RAVDESS speech (1440 clips) then lives on the training device as tensors, and
batches are cut by index slicing.

**Pre-extracted features.** ``features_dir`` reads the authors' released form instead
(:mod:`datamodules.ravdess_released`: ``.npy`` audio features and frame images listed by
``spa_dl.csv`` / ``spa_val.csv`` / ``spa_test.csv``); its CSVs define the splits, and the
feature arguments do not apply.

**Splits** are by actor: fold ``fold`` (0..4) of the common 4-actor folds (test on 4 actors,
validate on the next 4, train on 16; fold 0 tests on actors 1-4), or an explicit
``actor_split = {"train": [...], "val": [...], "test": [...]}``.

**Normalisation** (``normalize=True``): each modality is standardised with its training
split's statistics, one mean and standard deviation for the spectrogram and one per RGB
channel for the frames (the released code uses fixed constants to the same end).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from datamodules.base import SPLITS, PairedDataModule
from datamodules.ravdess_features import FrameSpec, LogMelSpec, cached_features
from datamodules.ravdess_files import (
    AUDIO_SOURCES,
    VOCAL_CHANNELS,
    Clip,
    check_actor_split,
    clip_files,
    fold_actors,
    group_utterances,
    pair_clips,
    split_clips,
)
from datamodules.ravdess_released import (
    load_released_split,
    missing_released_files,
    released_layout,
    released_shapes,
)
from ntdh_core import paths

ZENODO_URL = "https://zenodo.org/record/1188976"


def data_root(root: str | Path | None = None) -> Path:
    """The data root: ``root``, else ``$NTDH_DATA``, else ``./data``."""
    return Path(root) if root is not None else paths.data_root()


def _spec(cls: type, overrides: Mapping[str, Any] | None, what: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ValueError(f"unknown {what} feature argument(s) {unknown}; known: {sorted(known)}")
    return cls(**(overrides or {}))


def missing_layout_message(ravdess_dir: Path, problem: str) -> str:
    return (
        f"RAVDESS not found: {problem}. Expected the dataset as published, extracted into "
        f"{ravdess_dir}/Actor_01 .. Actor_24/ with files named MM-VV-EE-II-SS-RR-AA: "
        f"03-01-*.wav (Audio_Speech_Actors_01-24.zip) and 01-01-*.mp4 / 02-01-*.mp4 "
        f"(Video_Speech_Actor_01.zip .. _24.zip) from {ZENODO_URL}. The data root is "
        f"$NTDH_DATA (default ./data), or pass root=... or ravdess_dir=...; or pass "
        f"features_dir=... for the authors' pre-extracted features"
    )


class RavdessDataModule(PairedDataModule):
    """RAVDESS speech, audio (teacher by default) paired with video; see the module doc."""

    num_classes = 8
    modalities: ClassVar[tuple[str, str]] = ("audio", "video")

    def __init__(
        self,
        teacher: str = "audio",
        root: str | None = None,
        ravdess_dir: str | None = None,
        features_dir: str | None = None,
        fold: int = 0,
        actor_split: Mapping[str, Sequence[int]] | None = None,
        vocal_channel: str = "speech",
        audio_source: str = "auto",
        audio: Mapping[str, Any] | None = None,
        video: Mapping[str, Any] | None = None,
        normalize: bool = True,
        cache_dir: str | None = None,
        extract_workers: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        if teacher not in self.modalities:
            raise ValueError(f"teacher must be one of {self.modalities}, got {teacher!r}")
        if audio_source not in AUDIO_SOURCES:
            raise ValueError(f"audio_source must be one of {AUDIO_SOURCES}, got {audio_source!r}")
        if vocal_channel not in VOCAL_CHANNELS:
            raise ValueError(
                f"vocal_channel must be one of {VOCAL_CHANNELS}, got {vocal_channel!r}"
            )
        self.teacher = teacher
        self.student = next(m for m in self.modalities if m != teacher)
        self.ravdess_dir = (
            Path(ravdess_dir) if ravdess_dir is not None else data_root(root) / "ravdess"
        )
        self.features_dir = Path(features_dir) if features_dir is not None else None
        self.actors = fold_actors(fold) if actor_split is None else check_actor_split(actor_split)
        self.vocal_channel = vocal_channel
        self.audio_source = audio_source
        self.audio_spec = _spec(LogMelSpec, audio, "audio")
        self.video_spec = _spec(FrameSpec, video, "video")
        self.normalize = normalize
        default_cache = paths.cache_root() / "ravdess"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache
        self.extract_workers = extract_workers
        self.stats: dict[str, tuple[Tensor, Tensor]] = {}
        self._clips: dict[str, list[Clip]] | None = None
        self._check_files()  # fail now, not inside a Trainer; nothing is decoded yet

    @classmethod
    def is_available(cls, root: str | None = None) -> bool:
        """Whether ``<root>/ravdess`` holds at least one paired clip (names only are read)."""
        files = clip_files(data_root(root) / "ravdess")
        try:  # bad names are reported when the data is loaded, not here
            return bool(
                pair_clips(group_utterances(files, report=False), "auto", "speech", report=False)
            )
        except ValueError:  # a duplicate file: present, and loading it will say what is wrong
            return True

    def _check_files(self) -> None:
        if self.features_dir is not None:
            missing = missing_released_files(self.features_dir)
            if missing:
                raise FileNotFoundError(
                    f"pre-extracted RAVDESS features not found: missing {', '.join(missing)}; "
                    f"expected {released_layout(self.features_dir)}"
                )
        elif not self.ravdess_dir.is_dir():
            raise FileNotFoundError(
                missing_layout_message(self.ravdess_dir, f"{self.ravdess_dir} does not exist")
            )

    # --- clips and shapes --------------------------------------------------------------------
    def clips(self) -> dict[str, list[Clip]]:
        """The paired clips of each split (raw files only): names are read, nothing decoded."""
        if self.features_dir is not None:
            raise RuntimeError("pre-extracted features (features_dir) have no clip list")
        if self._clips is None:
            files = clip_files(self.ravdess_dir)
            if not files:
                raise FileNotFoundError(
                    missing_layout_message(
                        self.ravdess_dir, "no .wav or .mp4 files in Actor_XX folders there"
                    )
                )
            paired = pair_clips(group_utterances(files), self.audio_source, self.vocal_channel)
            if not paired:
                raise FileNotFoundError(
                    missing_layout_message(
                        self.ravdess_dir,
                        f"no {self.vocal_channel} utterance there has both audio "
                        f"(audio_source={self.audio_source!r}) and video",
                    )
                )
            self._clips = split_clips(paired, self.actors, self.ravdess_dir)
        return self._clips

    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of one ``xa`` and one ``xb`` sample, from the parameters (nothing decoded)."""
        if self.features_dir is not None:
            audio, video = released_shapes(self.features_dir)
        else:
            audio, video = self.audio_spec.shape, self.video_spec.shape
        shapes = {"audio": tuple(audio), "video": tuple(video)}
        return shapes[self.teacher], shapes[self.student]

    # --- tensors -----------------------------------------------------------------------------
    def build_split_tensors(self) -> dict[str, dict[str, Tensor]]:
        if self.features_dir is not None:
            arrays = {s: load_released_split(self.features_dir, s) for s in SPLITS}
        else:
            arrays = self._extract()
        inputs = {
            s: {"audio": torch.from_numpy(a), "video": torch.from_numpy(v)}
            for s, (a, v, _) in arrays.items()
        }
        if self.normalize:
            self.stats = {
                "audio": _moments(inputs["train"]["audio"], per_channel=False),
                "video": _moments(inputs["train"]["video"], per_channel=True),
            }
        out = {}
        for split, (_, _, y) in arrays.items():
            x = {m: self._prepare(m, inputs[split][m]) for m in self.modalities}
            out[split] = {"xa": x[self.teacher], "xb": x[self.student], "y": torch.from_numpy(y)}
        return out

    def _extract(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        clips = self.clips()
        ordered = [c for s in SPLITS for c in clips[s]]
        common = dict(cache_dir=self.cache_dir, workers=self.extract_workers)
        audio = cached_features(
            [c.audio for c in ordered], self.ravdess_dir, self.audio_spec, "audio-logmel", **common
        )
        video = cached_features(
            [c.video for c in ordered], self.ravdess_dir, self.video_spec, "video-frames", **common
        )
        out, start = {}, 0
        for s in SPLITS:
            stop = start + len(clips[s])
            labels = np.array([c.label for c in clips[s]], dtype=np.int64)
            out[s] = (audio[start:stop], video[start:stop], labels)
            start = stop
        return out

    def _prepare(self, modality: str, x: Tensor) -> Tensor:
        x = x.float()  # in place below: x is this module's own copy (no other reference)
        if not self.normalize:
            return x
        mean, std = self.stats[modality]
        return x.sub_(_expand(mean, x)).div_(_expand(std, x))


def _moments(x: Tensor, per_channel: bool, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of ``(N, C, H, W)``: overall, or per RGB channel of ``3k``
    stacked channels (per channel when ``C`` is not a multiple of 3). Accumulated in float64
    over chunks of samples, so no float64 copy of the split is made."""
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for part in x.split(chunk):
        part = part.double()
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    groups = 3 if per_channel and channels % 3 == 0 else channels if per_channel else 1
    total = total.view(-1, groups).sum(dim=0)
    squares = squares.view(-1, groups).sum(dim=0)
    count = x.numel() / groups
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.clamp_min(1e-6).float()


def _expand(stat: Tensor, x: Tensor) -> Tensor:
    """A per-channel statistic (1 or 3 values) broadcast over ``x``'s ``(N, C, H, W)``."""
    channels = x.shape[1]
    repeated = stat.repeat(channels // len(stat)) if channels % len(stat) == 0 else stat
    return repeated.view(1, -1, 1, 1)
