"""RAVDESS: names, pairing, actor folds, features and their cache, the released form, training.

Fixtures are written in the real formats by ``ravdess_fixtures.py`` (PCM ``.wav`` through
soundfile, H.264 ``.mp4`` through PyAV, RAVDESS names in ``Actor_XX`` folders); the real speech
``.wav`` files under ``../shared/data/ravdess`` are used where present.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import DATAMODULES, build_datamodule
from datamodules.ravdess import RavdessDataModule
from datamodules.ravdess_features import (
    CorruptClipError,
    FrameSpec,
    LogMelSpec,
    cache_path,
    read_cache,
    sample_indices,
)
from datamodules.ravdess_files import (
    ClipNameError,
    fold_actors,
    group_utterances,
    pair_clips,
    parse_name,
)

sys.path.insert(0, str(Path(__file__).parent))
import ravdess_fixtures as fx

SHARED_RAVDESS = Path(__file__).resolve().parents[3] / "shared" / "data" / "ravdess"
SHARED_WAVS = sorted(SHARED_RAVDESS.glob("Actor_*/03-*.wav"))
needs_shared_ravdess = pytest.mark.skipif(  # under CI=true a missing folder fails, never skips
    not SHARED_WAVS and os.environ.get("CI") != "true", reason="no shared RAVDESS wavs"
)
AUDIO = {"n_mels": 32, "offset": 0.0, "duration": 0.5}  # (1, 32, 51): fixture clips are short
VIDEO = {"n_frames": 2, "size": 16}  # (6, 16, 16)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> tuple[Path, dict[str, fx.FixtureClip]]:
    """A data root with four actors (1, 5, 9, 10) x four utterances, in all three versions."""
    root = tmp_path_factory.mktemp("ravdess_root")
    return root, fx.write_ravdess(root / "ravdess")


@pytest.fixture
def root_copy(fixture_root, tmp_path) -> tuple[Path, dict[str, fx.FixtureClip]]:
    """A private copy of the fixture root, for tests that change files."""
    shutil.copytree(fixture_root[0] / "ravdess", tmp_path / "data" / "ravdess")
    return tmp_path / "data", dict(fixture_root[1])


def _dm(root: Path, cache: Path, **kwargs) -> RavdessDataModule:
    args = {"audio": AUDIO, "video": VIDEO, "normalize": False, "batch_size": 4, **kwargs}
    return RavdessDataModule(root=str(root), cache_dir=str(cache), **args)


def _decoded(xa: torch.Tensor, xb: torch.Tensor) -> tuple[list[int], list[int]]:
    """Per sample: the code of its frames' grey level and the peak mel band of its audio."""
    levels = xb.mean(dim=(1, 2, 3)).tolist()
    codes = [round((level - fx.grey_level(0)) / 14) for level in levels]
    bands = xa[:, 0].mean(dim=2).argmax(dim=1).tolist()
    return codes, bands


def _peak_band(code: int) -> int:
    spec = LogMelSpec(**AUDIO)
    return int(spec.from_waveform(fx.tone(fx.tone_hz(code), 0.6), fx.RATE)[0].mean(1).argmax())


# --- names ----------------------------------------------------------------------------------
def test_parse_name_reads_the_seven_fields_and_the_label():
    name = parse_name(Path("Actor_12/02-01-06-01-02-01-12.mp4"))
    assert (name.modality, name.vocal, name.emotion, name.actor) == (2, 1, 6, 12)
    assert name.label == 5  # fearful: emotion id - 1
    assert name.key == "01-06-01-02-01-12"  # the last six fields
    assert parse_name("03-01-06-01-02-01-12.wav").key == name.key


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("03-01-09-01-01-01-01.wav", "emotion 09"),
        ("03-01-01-02-01-01-01.wav", "neutral"),
        ("01-01-03-01-01-01-01.wav", "are .mp4"),
        ("04-01-03-01-01-01-01.wav", "modality 04"),
        ("03-02-07-01-01-01-01.wav", "songs have no emotion 07"),
        ("03-01-03-01-01-03-01.wav", "repetition 03"),
        ("03-01-03-01-01-01-25.wav", "actor 25"),
        ("03-01-03-01-01-01-02.wav", "folder of actor 01"),
        ("._03-01-03-01-01-01-01.wav", "seven two-digit fields"),
        ("03-01-03-01-01-01.wav", "seven two-digit fields"),
    ],
)
def test_names_that_break_the_convention_are_rejected(name, problem):
    with pytest.raises(ClipNameError, match=problem):
        parse_name(Path("Actor_01") / name)


def test_bad_names_are_skipped_with_a_warning_naming_the_file(root_copy, tmp_path, caplog):
    root, clips = root_copy
    actor = root / "ravdess" / "Actor_01"
    good = actor / fx.ravdess_name(3, 1, 1)
    bad = [
        "03-01-09-01-01-01-01.wav",  # emotion 09
        "03-01-03-01-01-01-05.wav",  # actor 05 in Actor_01
        "._03-01-03-02-01-02-01.wav",  # a macOS shadow file
        "03-01-01-02-01-01-01.wav",  # neutral, strong
    ]
    for name in bad:
        shutil.copy(good, actor / name)
    (actor / "notes.txt").write_text("not a clip")
    dm = _dm(root, tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="datamodules.ravdess_files"):
        found = dm.clips()
    for name in bad:
        assert any(str(actor / name) in r.getMessage() for r in caplog.records), name
    assert not any("notes.txt" in r.getMessage() for r in caplog.records)
    keys = {c.key for split in found.values() for c in split}
    assert keys == set(clips)  # nothing extra, nothing relabelled
    assert all(c.label == clips[c.key].label for split in found.values() for c in split)


# --- pairing --------------------------------------------------------------------------------
def test_pairing_is_by_the_last_six_fields():
    folder = Path("Actor_07")
    names = [
        "02-01-05-02-01-01-07.mp4",  # video-only of utterance A
        "03-01-04-01-01-01-07.wav",  # audio of utterance B
        "03-01-05-02-01-01-07.wav",  # audio of A
        "01-01-04-01-01-01-07.mp4",  # audio-video of B
        "01-01-06-01-02-02-07.mp4",  # audio-video of C: soundtrack only
        "03-01-07-01-01-01-07.wav",  # D: audio without video
        "02-01-03-01-01-01-07.mp4",  # E: video without audio
        "02-02-03-01-01-01-07.mp4",  # song F: video only
        "03-02-03-01-01-01-07.wav",  # song F: audio
    ]
    utterances = group_utterances(folder / n for n in names)
    clips = {c.key: c for c in pair_clips(utterances, "auto", "speech")}
    assert set(clips) == {"01-05-02-01-01-07", "01-04-01-01-01-07", "01-06-01-02-02-07"}
    a, b, c = (clips[k] for k in ("01-05-02-01-01-07", "01-04-01-01-01-07", "01-06-01-02-02-07"))
    assert (a.audio.name, a.video.name) == ("03-01-05-02-01-01-07.wav", names[0])
    assert (b.audio.name, b.video.name) == ("03-01-04-01-01-01-07.wav", names[3])  # 01 video
    assert c.audio.name == c.video.name == names[4]  # the soundtrack of the 01 file
    assert (a.label, b.label, c.label, a.actor) == (4, 3, 5, 7)
    wav_only = {c.key for c in pair_clips(utterances, "wav", "speech")}
    assert wav_only == {"01-05-02-01-01-07", "01-04-01-01-01-07"}
    soundtrack = pair_clips(utterances, "soundtrack", "speech")
    assert {c.audio.name for c in soundtrack} == {names[3], names[4]}
    songs = pair_clips(utterances, "auto", "song")
    assert [c.key for c in songs] == ["02-03-01-01-01-07"]


def test_the_same_recording_twice_is_an_error_naming_both_files():
    names = [
        Path("a/Actor_03/03-01-02-01-01-01-03.wav"),
        Path("b/Actor_03/03-01-02-01-01-01-03.wav"),
    ]
    with pytest.raises(ValueError, match="same recording") as info:
        group_utterances(names)
    assert all(str(n) in str(info.value) for n in names)


def test_batches_pair_the_audio_and_video_of_one_utterance(fixture_root, tmp_path):
    root, clips = fixture_root
    dm = _dm(root, tmp_path / "cache", batch_size=3)
    bands = {clip.code: _peak_band(clip.code) for clip in clips.values()}
    assert len(set(bands.values())) == len(bands)  # each utterance's tone is recognisable
    loaders = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}
    for split, loader in loaders.items():
        expected = dm.clips()[split]
        for batch in loader():
            rows = [expected[i] for i in batch["index"].tolist()]
            codes, peak = _decoded(batch["xa"], batch["xb"])
            assert codes == [clips[c.key].code for c in rows]  # the video is the row's
            assert peak == [bands[code] for code in codes]  # ... and so is the audio
            assert batch["y"].tolist() == [clips[c.key].label for c in rows]
    assert dm.input_shapes() == ((1, 32, 51), (6, 16, 16))
    assert tuple(dm.split_tensors("train")["xa"].shape[1:]) == (1, 32, 51)


def test_audio_falls_back_to_the_soundtrack_of_the_audio_video_file(root_copy, tmp_path):
    root, clips = root_copy
    wav = root / "ravdess" / "Actor_09" / fx.ravdess_name(3, 3, 9, 2, 1, 2)
    wav.unlink()
    key = "01-03-02-01-02-09"
    dm = _dm(root, tmp_path / "cache")
    clip = next(c for c in dm.clips()["train"] if c.key == key)
    assert clip.audio.name == fx.ravdess_name(1, 3, 9, 2, 1, 2)
    train = dm.split_tensors("train")
    row = dm.clips()["train"].index(clip)
    codes, peak = _decoded(train["xa"][row : row + 1], train["xb"][row : row + 1])
    assert codes == [clips[key].code] and peak == [_peak_band(clips[key].code)]  # AAC decoded
    assert key not in {
        c.key for c in _dm(root, tmp_path / "c2", audio_source="wav").clips()["train"]
    }


# --- splits ---------------------------------------------------------------------------------
def test_folds_are_the_common_four_actor_folds_and_disjoint():
    assert fold_actors(0) == {
        "train": tuple(range(9, 25)),
        "val": (5, 6, 7, 8),
        "test": (1, 2, 3, 4),
    }
    for k in range(5):
        split = fold_actors(k)
        assert sorted(sum(split.values(), ())) == list(range(1, 25))  # disjoint, complete
        assert split["test"] == tuple(range(4 * k + 1, 4 * k + 5))
    with pytest.raises(ValueError, match=r"fold must be in 0\.\.4"):
        fold_actors(5)


def test_splits_are_actor_disjoint(fixture_root, tmp_path):
    root, _ = fixture_root
    clips = _dm(root, tmp_path / "cache").clips()
    actors = {split: {c.actor for c in found} for split, found in clips.items()}
    assert actors == {"train": {9, 10}, "val": {5}, "test": {1}}
    explicit = {"train": [1, 5], "val": [9], "test": [10]}
    clips = _dm(root, tmp_path / "cache", actor_split=explicit).clips()
    assert {c.actor for c in clips["train"]} == {1, 5}
    with pytest.raises(ValueError, match=r"actors \[5\] are in both 'train' and 'val'"):
        _dm(root, tmp_path / "cache", actor_split={"train": [5], "val": [5], "test": [1]})
    with pytest.raises(
        ValueError, match=r"no paired clips for the 'val' split \(actors \[13, 14, 15, 16\]\)"
    ):
        _dm(root, tmp_path / "c", fold=2).clips()  # fold 2 validates on actors 13-16


# --- features and the cache -----------------------------------------------------------------
def test_frames_are_sampled_evenly_centre_cropped_and_resized(tmp_path):
    frames = []
    for i in range(8):
        image = np.full((32, 48, 3), 10 + 30 * i, dtype=np.uint8)
        image[:, :8] = image[:, -8:] = (255, 0, 0)  # red bands outside the centre square
        frames.append(image)
    path = fx.write_mp4(tmp_path / "02-01-01-01-01-01-01.mp4", frames)
    out = FrameSpec(n_frames=3, size=16)(path)
    assert out.shape == (9, 16, 16) and out.dtype == np.uint8
    assert sample_indices(8, 3) == [1, 4, 6]  # the centres of three equal segments
    for j, index in enumerate(sample_indices(8, 3)):
        rgb = out[3 * j : 3 * j + 3].astype(float)
        assert abs(rgb.mean() - (10 + 30 * index)) < 3  # the right frame ...
        assert np.abs(rgb[0] - rgb[1]).max() < 8  # ... with no red band left: centre crop
    assert FrameSpec(n_frames=1, size=8, crop=0.5)(path).shape == (3, 8, 8)


def test_the_cache_is_reused_and_keyed_by_the_feature_parameters(
    fixture_root, tmp_path, monkeypatch
):
    root, _ = fixture_root
    cache = tmp_path / "cache"
    first = _dm(root, cache).split_tensors("train")

    def no_decoding(self, path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(LogMelSpec, "extract", no_decoding)
    monkeypatch.setattr(FrameSpec, "extract", no_decoding)
    again = _dm(root, cache).split_tensors("train")
    assert torch.equal(first["xa"], again["xa"]) and torch.equal(first["xb"], again["xb"])
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.npz")) == ["audio", "video"]
    with pytest.raises(AssertionError, match="decoded"):  # other parameters: another cache
        _dm(root, cache, audio={**AUDIO, "n_mels": 24}).setup()
    assert not list(cache.glob(".*.tmp"))


def test_a_failed_cache_write_leaves_the_previous_cache_intact(root_copy, tmp_path, monkeypatch):
    root, _ = root_copy
    cache = tmp_path / "cache"
    _dm(root, cache).setup()
    path = cache_path(cache, "audio-logmel", LogMelSpec(**AUDIO))
    before = path.read_bytes()
    fx.write_utterance(root / "ravdess", 9, (2, 1, 1, 1), code=16)  # new content to add

    def broken_savez(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr("datamodules.ravdess_features.np.savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        _dm(root, cache).setup()
    assert path.read_bytes() == before  # never half-written
    assert not list(cache.glob(".*.tmp"))  # no temporary file left behind
    assert len(read_cache(path, LogMelSpec(**AUDIO))) == 16


@pytest.mark.parametrize("suffix", [".mp4", ".wav"])
def test_a_corrupt_clip_is_named_and_the_clips_before_it_are_kept(
    root_copy, tmp_path, monkeypatch, suffix
):
    root, _ = root_copy
    modality = 2 if suffix == ".mp4" else 3
    bad = root / "ravdess" / "Actor_10" / fx.ravdess_name(modality, 5, 10, 1, 2, 1)
    good = bad.read_bytes()
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" if suffix == ".wav" else b"not a video" * 50)
    cache = tmp_path / "cache"
    with pytest.raises(CorruptClipError) as info:
        _dm(root, cache).setup()
    assert str(bad) in str(info.value) and "download it again" in str(info.value)
    spec = LogMelSpec(**AUDIO) if suffix == ".wav" else FrameSpec(**VIDEO)
    kind = "audio-logmel" if suffix == ".wav" else "video-frames"
    kept = read_cache(cache_path(cache, kind, spec), spec)
    assert 0 < len(kept) < 16
    bad.write_bytes(good)
    calls = []
    original = type(spec).extract

    def counting(self, path):
        calls.append(path)
        return original(self, path)

    monkeypatch.setattr(type(spec), "extract", counting)
    _dm(root, cache).setup()
    assert bad in calls and len(calls) == 16 - len(kept)  # only what was left is computed


def test_parallel_extraction_matches_serial_and_names_a_corrupt_clip(root_copy, tmp_path):
    root, _ = root_copy
    serial = _dm(root, tmp_path / "serial").split_tensors("train")
    parallel = _dm(root, tmp_path / "parallel", extract_workers=2).split_tensors("train")
    assert torch.equal(serial["xa"], parallel["xa"]) and torch.equal(serial["xb"], parallel["xb"])
    bad = root / "ravdess" / "Actor_09" / fx.ravdess_name(2, 8, 9, 2, 2, 2)
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(CorruptClipError) as info:  # raised in a worker, pickled back
        _dm(root, tmp_path / "other", extract_workers=2).setup()
    assert info.value.path == bad and str(bad) in str(info.value)


# --- real files -----------------------------------------------------------------------------
@needs_shared_ravdess
def test_real_ravdess_wavs_give_labels_and_spectrograms(tmp_path):
    assert {p.parent.name for p in SHARED_WAVS} >= {"Actor_01", "Actor_02", "Actor_12"}
    name = parse_name(SHARED_RAVDESS / "Actor_12" / "03-01-05-01-02-01-12.wav")
    assert (name.label, name.actor, name.key) == (4, 12, "01-05-01-02-01-12")  # angry
    for wav in SHARED_WAVS:  # the real files, linked (not copied) beside fixture videos
        link = tmp_path / "ravdess" / wav.parent.name / wav.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(wav)
        fx.write_mp4(link.with_name("02" + wav.stem[2:] + ".mp4"), fx.grey_frames(100, 4))
    split = {"train": [1], "val": [2], "test": [12]}
    dm = RavdessDataModule(root=str(tmp_path), cache_dir=str(tmp_path / "cache"), actor_split=split)
    clips = dm.clips()
    assert sum(len(c) for c in clips.values()) == len(SHARED_WAVS)
    for found in clips.values():
        for clip in found:
            assert clip.label == int(clip.audio.name.split("-")[2]) - 1
    train = dm.split_tensors("train")
    assert tuple(train["xa"].shape[1:]) == LogMelSpec().shape == (1, 64, 301)  # the defaults
    assert tuple(train["xb"].shape[1:]) == (9, 128, 128)
    raw = LogMelSpec()(SHARED_RAVDESS / "Actor_01" / "03-01-01-01-01-01-01.wav")
    assert raw.shape == (1, 64, 301) and raw.max() > -30 and raw.max() - raw.min() <= 80 + 1e-3
    assert torch.allclose(train["xa"].mean(), torch.tensor(0.0), atol=1e-4)  # standardised


# --- the released pre-extracted form --------------------------------------------------------
def test_released_pre_extracted_features_are_read(tmp_path):
    labels = fx.write_released_features(tmp_path / "features")
    dm = RavdessDataModule(features_dir=str(tmp_path / "features"), normalize=False)
    assert dm.input_shapes() == ((1, 40, 64), (3, 24, 48))
    train, test = dm.split_tensors("train"), dm.split_tensors("test")
    assert train["xa"].shape == (12, 1, 40, 64) and train["xb"].shape == (12, 3, 24, 48)
    assert train["y"].tolist() == labels["spa_dl.csv"].tolist()
    assert test["y"].tolist() == labels["spa_test.csv"].tolist()
    assert train["xb"].max() > 200  # raw pixel values with normalize=False
    swapped = RavdessDataModule(features_dir=str(tmp_path / "features"), teacher="video")
    assert swapped.input_shapes() == ((3, 24, 48), (1, 40, 64))


def test_released_labels_that_contradict_the_file_names_are_an_error(tmp_path):
    fx.write_released_features(tmp_path / "features")
    csv_path = tmp_path / "features" / "data_file" / "spa_val.csv"
    lines = csv_path.read_text().splitlines()
    audio, image, label = lines[2].split(",")
    lines[2] = f"{audio},{image},{(int(label) + 1) % 8}"
    csv_path.write_text("\n".join(lines) + "\n")
    dm = RavdessDataModule(features_dir=str(tmp_path / "features"))
    with pytest.raises(ValueError, match=r"spa_val\.csv, line 3: label .* disagrees with"):
        dm.setup()


# --- errors, availability, training ---------------------------------------------------------
def test_missing_data_names_the_layout_and_where_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        RavdessDataModule(root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "ravdess") in message and "Actor_01" in message
    assert "zenodo" in message and "NTDH_DATA" in message
    (tmp_path / "ravdess" / "Actor_01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no \.wav or \.mp4 files"):
        RavdessDataModule(root=str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match=r"spa_dl\.csv"):
        RavdessDataModule(features_dir=str(tmp_path / "nowhere"))
    monkeypatch.setenv("NTDH_DATA", str(tmp_path))
    assert not RavdessDataModule.is_available()


def test_is_available_and_teacher_swap(fixture_root, tmp_path, monkeypatch):
    root, _ = fixture_root
    monkeypatch.setenv("NTDH_DATA", str(root))
    assert RavdessDataModule.is_available() and DATAMODULES["ravdess"] is RavdessDataModule
    swapped = _dm(root, tmp_path / "cache", teacher="video")
    assert swapped.input_shapes() == ((6, 16, 16), (1, 32, 51))
    default = _dm(root, tmp_path / "cache").split_tensors("test")
    assert torch.equal(swapped.split_tensors("test")["xa"], default["xb"])
    with pytest.raises(ValueError, match="teacher must be one of"):
        _dm(root, tmp_path / "cache", teacher="lidar")
    with pytest.raises(ValueError, match="unknown audio feature argument"):
        _dm(root, tmp_path / "cache", audio={"n_mfcc": 40})


def test_lightning_distils_audio_into_video_through_the_datamodule(
    fixture_root, tmp_path, lean_trainer
):
    from models import build_model
    from ntdh_bench.distillers import build_distiller
    from ntdh_bench.module import CrossModalKD

    root, _ = fixture_root
    dm = build_datamodule(
        "ravdess",
        root=str(root),
        cache_dir=str(tmp_path / "cache"),
        audio=AUDIO,
        video=VIDEO,
        batch_size=4,
    )
    shape_a, shape_b = dm.input_shapes()
    teacher = build_model("cnn2d", shape_a, dm.num_classes)
    student = build_model("cnn2d", shape_b, dm.num_classes)
    assert teacher.kernel_sizes == (7, 5, 5) and student.kernel_sizes == (3, 3, 3)
    module = CrossModalKD(student, teacher, build_distiller("kd", T=4.0), dm.num_classes)
    trainer = lean_trainer(max_epochs=1)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    elapsed = time.perf_counter() - start
    assert trainer.global_step == 2  # 8 training clips, batches of 4
    results = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert 0.0 <= results["test/acc"] <= 1.0
    assert elapsed < 30
