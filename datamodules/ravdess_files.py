"""RAVDESS file names, the published folder layout, pairing of audio and video, actor folds.

**Names** (Livingstone & Russo 2018). Every file is named by seven two-digit fields,
``MM-VV-EE-II-SS-RR-AA.ext``::

    MM modality     01 audio-video (.mp4), 02 video-only (.mp4), 03 audio-only (.wav)
    VV vocal        01 speech, 02 song
    EE emotion      01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful,
                    07 disgust, 08 surprised          -> label = EE - 1 (8 classes)
    II intensity    01 normal, 02 strong (neutral has no strong intensity)
    SS statement    01 "Kids are talking by the door", 02 "Dogs are sitting by the door"
    RR repetition   01, 02
    AA actor        01 .. 24 (odd: male, even: female); the file lies in ``Actor_AA/``

Songs exist for emotions 01-06 only. A ``.wav`` or ``.mp4`` whose name breaks any of these
rules (a field out of range, an extension that does not match the modality, a neutral clip of
strong intensity, an actor field that differs from its ``Actor_XX`` folder, macOS ``._*``
shadow files) is reported with a logging warning naming the file, and skipped: never guessed,
never mislabelled. Other files (``.DS_Store``, notes) are ignored.

**Layout.** The clips are read from every ``Actor_XX`` folder under the RAVDESS folder, at any
depth, so both the Zenodo zips extracted into one folder (``Actor_01/`` holding the ``.wav``
and the ``.mp4`` files) and each zip extracted into its own folder
(``Audio_Speech_Actors_01-24/Actor_01/``, ``Video_Speech_Actor_01/Actor_01/``) work.

**Pairing.** The three modality versions of one recording share the last six fields (the
*utterance key*, e.g. ``01-05-02-01-02-12``): the audio and the video of a sample are the
files with the same key. The video is the video-only ``02`` file, else the audio-video ``01``
file (the same frames). The audio (``audio_source``) is the ``03`` ``.wav`` (``"wav"``), the
soundtrack of the ``01`` file (``"soundtrack"``), or the ``.wav`` where there is one and the
soundtrack otherwise (``"auto"``). An utterance lacking either modality is left out and
counted in a log message.

**Folds.** The common 4-actor folds of audio-visual RAVDESS work (Chumachenko et al.,
"Self-attention fusion for audiovisual emotion recognition with incomplete data", ICPR 2022,
five folds): the actors form six groups of four consecutive ids, ``1-4, 5-8, ..., 21-24``;
fold ``k`` (0-based, 0..4) tests on group ``k``, validates on group ``k + 1`` and trains on the
other 16 actors. Fold 0: test 1-4, validation 5-8, training 9-24. No actor is in two splits.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from datamodules.base import report_data_problem

log = logging.getLogger(__name__)

EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
MODALITIES = {1: "audio-video", 2: "video-only", 3: "audio-only"}
VOCAL = {1: "speech", 2: "song"}
VOCAL_CHANNELS = ("speech", "song", "both")  # the choices of the datamodule
SONG_EMOTIONS = range(1, 7)
N_ACTORS = 24
ACTOR_GROUPS = tuple(tuple(range(start, start + 4)) for start in range(1, N_ACTORS + 1, 4))
N_FOLDS = len(ACTOR_GROUPS) - 1
AUDIO_SOURCES = ("auto", "wav", "soundtrack")
SPLIT_NAMES = ("train", "val", "test")
_NAME = re.compile(r"\d\d(-\d\d){6}")
_ACTOR_DIR = re.compile(r"Actor_(\d\d)")
_EXTENSIONS = {1: ".mp4", 2: ".mp4", 3: ".wav"}


class ClipNameError(ValueError):
    """A ``.wav`` / ``.mp4`` file whose name breaks the RAVDESS naming convention."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass(frozen=True)
class ClipName:
    """The seven fields of a RAVDESS file name, as integers."""

    modality: int
    vocal: int
    emotion: int
    intensity: int
    statement: int
    repetition: int
    actor: int

    @property
    def label(self) -> int:
        """The class index: emotion id - 1."""
        return self.emotion - 1

    @property
    def key(self) -> str:
        """The utterance key: the last six fields, shared by an utterance's three files."""
        fields = (self.vocal, self.emotion, self.intensity, self.statement, self.repetition)
        return "-".join(f"{v:02d}" for v in (*fields, self.actor))


def parse_name(path: str | Path) -> ClipName:
    """The fields of a RAVDESS file name; raises :class:`ClipNameError` for any other name.

    The folder is checked too when it is an ``Actor_XX`` folder: its actor must be the name's.
    """
    path = Path(path)
    if not _NAME.fullmatch(path.stem):
        raise ClipNameError(path, "not seven two-digit fields MM-VV-EE-II-SS-RR-AA")
    name = ClipName(*(int(field) for field in path.stem.split("-")))
    problems = []
    if name.modality not in MODALITIES:
        problems.append(f"modality {name.modality:02d} is not 01, 02 or 03")
    elif path.suffix.lower() != _EXTENSIONS[name.modality]:
        expected = _EXTENSIONS[name.modality]
        problems.append(f"modality {name.modality:02d} files are {expected}, not {path.suffix!r}")
    if name.vocal not in VOCAL:
        problems.append(f"vocal channel {name.vocal:02d} is not 01 (speech) or 02 (song)")
    if not 1 <= name.emotion <= len(EMOTIONS):
        problems.append(f"emotion {name.emotion:02d} is not 01..08")
    elif name.vocal == 2 and name.emotion not in SONG_EMOTIONS:
        problems.append(f"songs have no emotion {name.emotion:02d} ({EMOTIONS[name.emotion - 1]})")
    if name.intensity not in (1, 2):
        problems.append(f"intensity {name.intensity:02d} is not 01 or 02")
    elif name.emotion == 1 and name.intensity == 2:
        problems.append("neutral (emotion 01) has no strong intensity (02)")
    if name.statement not in (1, 2):
        problems.append(f"statement {name.statement:02d} is not 01 or 02")
    if name.repetition not in (1, 2):
        problems.append(f"repetition {name.repetition:02d} is not 01 or 02")
    if not 1 <= name.actor <= N_ACTORS:
        problems.append(f"actor {name.actor:02d} is not 01..24")
    folder = _ACTOR_DIR.fullmatch(path.parent.name)
    if folder and int(folder.group(1)) != name.actor:
        problems.append(f"actor {name.actor:02d} lies in the folder of actor {folder.group(1)}")
    if problems:
        raise ClipNameError(path, "; ".join(problems))
    return name


def name_label(stem: str) -> int | None:
    """The label a seven-field RAVDESS stem implies (emotion id - 1), else ``None``."""
    if not _NAME.fullmatch(stem):
        return None
    emotion = int(stem.split("-")[2])
    return emotion - 1 if 1 <= emotion <= len(EMOTIONS) else None


@dataclass(frozen=True)
class Utterance:
    """The files of one recording (some may be missing), found by its key."""

    key: str
    actor: int
    label: int
    vocal: int
    wav: Path | None = None  # 03, audio-only
    audio_video: Path | None = None  # 01
    video_only: Path | None = None  # 02


@dataclass(frozen=True)
class Clip:
    """A paired sample: one utterance's audio source and video file."""

    key: str
    actor: int
    label: int
    audio: Path  # a .wav, or the .mp4 whose soundtrack is the audio
    video: Path


def actor_folders(ravdess_dir: str | Path) -> list[Path]:
    """The ``Actor_XX`` folders under ``ravdess_dir``, at any depth, sorted."""
    root = Path(ravdess_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("Actor_*") if p.is_dir() and _ACTOR_DIR.fullmatch(p.name))


def clip_files(ravdess_dir: str | Path) -> list[Path]:
    """Every ``.wav`` and ``.mp4`` file in the ``Actor_XX`` folders (names unchecked)."""
    return [
        f
        for folder in actor_folders(ravdess_dir)
        for f in sorted(folder.iterdir())
        if f.is_file() and f.suffix.lower() in (".wav", ".mp4")
    ]


def group_utterances(files: Iterable[str | Path], report: bool = True) -> list[Utterance]:
    """Group files by utterance key; a bad name is skipped, with a warning when ``report``.

    Raises ``ValueError`` naming both files when one version of an utterance is found twice
    (e.g. a zip extracted into two folders): which of them is meant cannot be told.
    """
    slots = {1: "audio_video", 2: "video_only", 3: "wav"}
    found: dict[str, dict[str, object]] = {}
    skipped: list[Path] = []
    for f in files:
        path = Path(f)
        try:
            name = parse_name(path)
        except ClipNameError as err:
            if report:
                log.warning("RAVDESS: skipping %s: %s", err.path, err.problem)
            skipped.append(path)
            continue
        entry = found.setdefault(
            name.key,
            {"key": name.key, "actor": name.actor, "label": name.label, "vocal": name.vocal},
        )
        slot = slots[name.modality]
        if slot in entry:
            raise ValueError(
                f"RAVDESS: {entry[slot]} and {path} are the same recording (modality "
                f"{name.modality:02d}, utterance {name.key}); keep one of them"
            )
        entry[slot] = path
    if skipped and report:
        shown = ", ".join(str(p) for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        report_data_problem(
            "skipped_files",
            f"RAVDESS: skipped {len(skipped)} file(s) whose names break the "
            f"MM-VV-EE-II-SS-RR-AA convention: {shown}",
            len(skipped),
        )
    return [Utterance(**found[key]) for key in sorted(found, key=_order)]


def _order(key: str) -> tuple[int, str]:
    return int(key[-2:]), key  # by actor, then by the other fields


def pair_clips(
    utterances: Iterable[Utterance],
    audio_source: str = "auto",
    vocal: str = "speech",
    report: bool = True,
) -> list[Clip]:
    """The paired clips of the requested vocal channel (``speech``, ``song`` or ``both``).

    Utterances with only one modality are left out; with ``report``, as a data warning
    (``unpaired_clips``) naming a few of them (an error under ``--strict``)."""
    if audio_source not in AUDIO_SOURCES:
        raise ValueError(f"audio_source must be one of {AUDIO_SOURCES}, got {audio_source!r}")
    channels = {"speech": {1}, "song": {2}, "both": {1, 2}}
    if vocal not in channels:
        raise ValueError(f"vocal_channel must be one of {VOCAL_CHANNELS}, got {vocal!r}")
    clips, no_audio, no_video, unpaired = [], 0, 0, []
    for u in utterances:
        if u.vocal not in channels[vocal]:
            continue
        video = u.video_only or u.audio_video
        audio = {
            "wav": u.wav,
            "soundtrack": u.audio_video,
            "auto": u.wav or u.audio_video,
        }[audio_source]
        no_audio += audio is None
        no_video += video is None
        if audio is not None and video is not None:
            clips.append(Clip(u.key, u.actor, u.label, audio, video))
        else:
            unpaired.append(u.wav or u.audio_video or u.video_only or u.key)
    if unpaired and report:
        shown = ", ".join(str(p) for p in unpaired[:5]) + (", ..." if len(unpaired) > 5 else "")
        report_data_problem(
            "unpaired_clips",
            f"RAVDESS: left out {len(unpaired)} unpaired utterance(s): {no_audio} without audio "
            f"(audio_source={audio_source!r}) and {no_video} without video, e.g. {shown}",
            len(unpaired),
        )
    return clips


def fold_actors(fold: int) -> dict[str, tuple[int, ...]]:
    """The actors of each split in fold ``fold`` (0..4) of the 4-actor folds (module doc)."""
    if not 0 <= fold < N_FOLDS:
        raise ValueError(f"fold must be in 0..{N_FOLDS - 1}, got {fold}")
    test, val = ACTOR_GROUPS[fold], ACTOR_GROUPS[fold + 1]
    train = tuple(a for a in range(1, N_ACTORS + 1) if a not in test + val)
    return {"train": train, "val": val, "test": test}


def check_actor_split(split: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Validate an explicit ``{"train", "val", "test"}: actors`` split: disjoint, ids 1..24."""
    if set(split) != set(SPLIT_NAMES):
        raise ValueError(f"actor_split needs the keys {SPLIT_NAMES}, got {sorted(split)}")
    out = {s: tuple(int(a) for a in split[s]) for s in SPLIT_NAMES}
    for s, actors in out.items():
        bad = [a for a in actors if not 1 <= a <= N_ACTORS]
        if bad or not actors:
            raise ValueError(f"actor_split[{s!r}] must list actors in 1..24, got {list(actors)}")
    for i, a in enumerate(SPLIT_NAMES):
        for b in SPLIT_NAMES[i + 1 :]:
            shared = sorted(set(out[a]) & set(out[b]))
            if shared:
                raise ValueError(f"actor_split: actors {shared} are in both {a!r} and {b!r}")
    return out


def split_clips(
    clips: Sequence[Clip], actors: Mapping[str, Sequence[int]], where: str | Path
) -> dict[str, list[Clip]]:
    """Clips per split by actor; an empty split raises ``ValueError`` naming its actors."""
    out = {s: [c for c in clips if c.actor in actors[s]] for s in SPLIT_NAMES}
    present = sorted({c.actor for c in clips})
    for s, members in out.items():
        if not members:
            raise ValueError(
                f"RAVDESS: no paired clips for the {s!r} split (actors {list(actors[s])}) under "
                f"{where}; actors with paired clips: {present}. Add those actors' files, or "
                f"choose another fold or an explicit actor_split"
            )
    return out
