"""The bad-input catalogue: every datamodule and the command line, fed broken input in the
real on-disk formats (written by the fixtures of ``tests/datamodules``).

Each case names its datamodule (or ``cli`` / ``store`` / ``verdicts``) and its class:

* ``file``: missing or malformed files (these already worked; kept so they stay so);
* ``unchecked``: argument values that must be refused before any data is read;
* ``read``: values read wrongly (a ``--set`` value of the wrong type, a label out of range);
* ``lost``: data silently changing what is trained on (short reads, unpaired clips, skipped
  files): a warning naming the file, and under ``--strict`` a :class:`DataError`;
* ``cache``: a corrupt cache entry: moved aside with a warning naming it, rebuilt;
* ``store``: damaged ``runs.jsonl`` / ``grid.json``: skipped or rebuilt, named;
* ``verdict``: a verdict from missing or bad cells says "not judged" with the reason.

Every case asserts the outcome's type (the exception, or a warning, or the verdict status)
and that its message names the culprit (the file, the option, the line). A case goes red when
the suite raises the wrong type, raises nothing, or raises without naming what is wrong.
"""

from __future__ import annotations

import gzip
import json
import logging
import pickle
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datamodules import (
    DigitsDataModule,
    MNISTMDataModule,
    NYUDepthDataModule,
    NYUSSCDataModule,
    RavdessDataModule,
    SemanticKittiDataModule,
    SyntheticDataModule,
)
from datamodules.base import DataError
from datamodules.idx import IDXFormatError
from datamodules.ravdess_features import CorruptClipError
from ntdh_bench import cli
from ntdh_bench.claims import NOT_JUDGED, paired_verdict, verdict_from_differences
from ntdh_bench.results import ResultStore, make_record
from ntdh_bench.status import sweep_status

sys.path.insert(0, str(Path(__file__).parent / "datamodules"))
import mnist_m_fixtures as mfx
import nyu_fixtures as nfx
import ravdess_fixtures as rfx
import semantic_kitti_fixtures as kfx

WARNS = "warning"  # the outcome of a recovered problem: a logged warning naming the culprit
AUDIO = {"n_mels": 16, "offset": 0.0, "duration": 0.5}
VIDEO = {"n_frames": 1, "size": 8}
KITTI_SMALL = {"crop_size": (32, 64), "eval_crop_size": (40, 96), "batch_size": 2}


@dataclass
class Ctx:
    tmp: Path
    roots: Any
    monkeypatch: pytest.MonkeyPatch


class Roots:
    """Fixture data roots, each written once per module and copied for cases that break it."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self._built: dict[str, Path] = {}

    def _once(self, name: str, write: Callable[[Path], None]) -> Path:
        if name not in self._built:
            root = self.factory.mktemp(name)
            write(root)
            self._built[name] = root
        return self._built[name]

    def copy(self, name: str, dest: Path) -> Path:
        writers = {
            "ravdess": lambda r: rfx.write_ravdess(
                r / "ravdess",
                actors=(1, 5, 9),
                utterances=(
                    (1, 1, 1, 1),
                    (2, 1, 1, 1),
                ),
            ),
            "mnist": lambda r: (
                mfx.write_mnist(r / "mnist", n_train=30, n_test=20),
                mfx.write_bsds_folder(r / "bsds", n_train=2),
            ),
            "ssc": lambda r: nfx.write_ssc(r / "nyu_ssc", n_train=2, n_test=1),
            "nyu": _write_nyu,
            "kitti": lambda r: kfx.write_semantic_kitti(r, {0: 2, 8: 1}),
        }
        src = self._once(name, writers[name])
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest


def _write_nyu(root: Path) -> None:
    folder = root / "nyu_depth_v2"
    nfx.write_labelled_mat(folder / "nyu_depth_v2_labeled.mat", nfx.labelled_arrays(4))
    nfx.write_splits(folder / "meta" / "splits.mat", [1, 3], [2, 4])
    nfx.write_mapping(folder / "meta" / "classMapping40.mat", (np.arange(894) % 40) + 1)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Roots:
    return Roots(tmp_path_factory)


# --- the cases: each returns (thunk, culprit) ---------------------------------------------------
CASES: list[tuple[str, str, str, Any, Callable[[Ctx], tuple[Callable[[], Any], str]]]] = []


def case(name: str, datamodule: str, klass: str, expected: Any):
    def register(make):
        CASES.append((name, datamodule, klass, expected, make))
        return make

    return register


def _ctor(cls, culprit: str, **kwargs) -> Callable[[Ctx], tuple[Callable[[], Any], str]]:
    return lambda ctx: (lambda: cls(**kwargs), culprit)


# synthetic: every argument checked on construction
for _name, _kwargs, _culprit in [
    ("gap-above-1", {"gap": 1.5}, "gap"),
    ("gap-negative", {"gap": -0.1}, "gap"),
    ("window-zero", {"window": 0}, "window"),
    ("informative-above-features", {"n_informative": 60, "n_features": 50}, "n_informative"),
    ("train-not-below-samples", {"n_samples": 100, "n_train": 100}, "n_train"),
    ("batch-size-zero", {"batch_size": 0}, "batch_size"),
]:
    case(f"synthetic-{_name}", "synthetic", "unchecked", ValueError)(
        _ctor(SyntheticDataModule, _culprit, **_kwargs)
    )

# digits (scikit-learn's 8x8 digits, no files)
for _name, _kwargs, _culprit in [
    ("teacher-unknown", {"teacher": "audio"}, "teacher"),
    ("noise-negative", {"noise": {"digits": -1.0}}, "noise"),
    ("noise-unknown-modality", {"noise": {"mnist": 1.0}}, "mnist"),
    ("n-test-too-large", {"n_test": 1790}, "n_test"),
]:
    case(f"digits-{_name}", "digits", "unchecked", ValueError)(
        _ctor(DigitsDataModule, _culprit, **_kwargs)
    )


# mnist_m
def _mnist(ctx: Ctx, **kwargs) -> MNISTMDataModule:
    return MNISTMDataModule(root=str(ctx.tmp), cache_dir=str(ctx.tmp / "cache"), **kwargs)


def _raw(ctx: Ctx, name: str) -> Path:
    return ctx.tmp / "mnist" / "MNIST" / "raw" / name


@case("mnist_m-files-missing", "mnist_m", "file", FileNotFoundError)
def _(ctx):
    return lambda: _mnist(ctx), "train-images-idx3-ubyte"


@case("mnist_m-idx-truncated", "mnist_m", "file", IDXFormatError)
def _(ctx):
    ctx.roots.copy("mnist", ctx.tmp)
    path = _raw(ctx, "t10k-images-idx3-ubyte.gz")
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:500]))
    return lambda: _mnist(ctx).setup(), path.name


@case("mnist_m-idx-wrong-magic", "mnist_m", "file", IDXFormatError)
def _(ctx):
    ctx.roots.copy("mnist", ctx.tmp)
    path = _raw(ctx, "train-labels-idx1-ubyte.gz")
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[2] = 0x0D  # a float32 type code where uint8 labels belong
    path.write_bytes(gzip.compress(bytes(data)))
    return lambda: _mnist(ctx).setup(), path.name


@case("mnist_m-label-out-of-range", "mnist_m", "read", ValueError)
def _(ctx):
    ctx.roots.copy("mnist", ctx.tmp)
    path = _raw(ctx, "t10k-labels-idx1-ubyte")  # write_idx adds the .gz
    labels = np.full(20, 12, np.uint8)  # a "digit" 12 would be read as a class
    mfx.write_idx(path, labels, gz=True)
    return lambda: _mnist(ctx).setup(), "t10k-labels"


@case("mnist_m-images-labels-count-differ", "mnist_m", "read", ValueError)
def _(ctx):
    ctx.roots.copy("mnist", ctx.tmp)
    mfx.write_idx(_raw(ctx, "t10k-labels-idx1-ubyte"), np.zeros(19, np.uint8), gz=True)
    return lambda: _mnist(ctx).setup(), "t10k-labels"


@case("mnist_m-source-unknown", "mnist_m", "unchecked", ValueError)
def _(ctx):
    return lambda: _mnist(ctx, source="test"), "source"


@case("mnist_m-t10k-split-negative", "mnist_m", "unchecked", ValueError)
def _(ctx):
    return lambda: _mnist(ctx, source="t10k", t10k_split=(10, -1, 5)), "t10k_split"


@case("mnist_m-published-missing", "mnist_m", "file", FileNotFoundError)
def _(ctx):
    ctx.roots.copy("mnist", ctx.tmp)
    return lambda: _mnist(ctx, published=str(ctx.tmp / "mnist_m_data.pkl")), "mnist_m_data.pkl"


@case("mnist_m-published-not-a-pickle", "mnist_m", "file", ValueError)
def _(ctx):
    ctx.roots.copy("mnist", ctx.tmp)
    path = ctx.tmp / "mnist_m_data.pkl"
    path.write_bytes(b"\x80\x04 this is not a pickle")
    return lambda: _mnist(ctx, published=str(path)).setup(), str(path)


@case("mnist_m-published-wrong-type", "mnist_m", "read", ValueError)
def _(ctx):
    ctx.roots.copy("mnist", ctx.tmp)
    path = ctx.tmp / "mnist_m_data.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    return lambda: _mnist(ctx, published=str(path)).setup(), str(path)


@case("mnist_m-bsds-missing", "mnist_m", "file", FileNotFoundError)
def _(ctx):
    ctx.roots.copy("mnist", ctx.tmp)
    shutil.rmtree(ctx.tmp / "bsds")
    return lambda: _mnist(ctx).setup(), "bsds"


def _corrupt_mnist_cache(ctx: Ctx, damage: Callable[[Path], None]):
    ctx.roots.copy("mnist", ctx.tmp)
    first = _mnist(ctx)
    first.setup()
    (path,) = sorted((ctx.tmp / "cache").glob("mnist_m_train_*.npz"))
    damage(path)

    def rebuild():
        again = _mnist(ctx)
        again.setup()  # regenerated: the same images as before the damage
        assert np.array_equal(
            again.split_tensors("train")["xb"], first.split_tensors("train")["xb"]
        )
        assert (path.parent / ".bad" / path.name).exists()  # moved aside, not deleted

    return rebuild, path.name


@case("mnist_m-cache-truncated", "mnist_m", "cache", WARNS)
def _(ctx):
    return _corrupt_mnist_cache(ctx, lambda p: p.write_bytes(p.read_bytes()[:300]))


@case("mnist_m-cache-edited", "mnist_m", "cache", WARNS)
def _(ctx):
    def edit(path: Path) -> None:  # a valid .npz whose images are not the ones hashed
        with np.load(path) as npz:
            arrays = dict(npz)
        arrays["images"] = arrays["images"].copy()
        arrays["images"][0, 0, 0, 0] ^= 0xFF
        with path.open("wb") as f:
            np.savez(f, **arrays)

    return _corrupt_mnist_cache(ctx, edit)


# ravdess
def _ravdess(ctx: Ctx, **kwargs) -> RavdessDataModule:
    split = {"train": [9], "val": [5], "test": [1]}
    options = {"audio": AUDIO, "video": VIDEO, "actor_split": split, **kwargs}
    return RavdessDataModule(root=str(ctx.tmp), cache_dir=str(ctx.tmp / "cache"), **options)


def _actor(ctx: Ctx, actor: int) -> Path:
    return ctx.tmp / "ravdess" / f"Actor_{actor:02d}"


@case("ravdess-folder-missing", "ravdess", "file", FileNotFoundError)
def _(ctx):
    return lambda: _ravdess(ctx), str(ctx.tmp / "ravdess")


@case("ravdess-no-clip-files", "ravdess", "file", FileNotFoundError)
def _(ctx):
    (ctx.tmp / "ravdess" / "Actor_01").mkdir(parents=True)
    return lambda: _ravdess(ctx).clips(), "no .wav or .mp4 files"


for _name, _kwargs, _culprit in [
    ("teacher-unknown", {"teacher": "text"}, "teacher"),
    ("audio-source-unknown", {"audio_source": "mic"}, "audio_source"),
    ("vocal-channel-unknown", {"vocal_channel": "humming"}, "vocal_channel"),
    ("audio-option-unknown", {"audio": {"n_melz": 3}}, "n_melz"),
    ("audio-window-above-fft", {"audio": {"win_length": 1024, "n_fft": 512}}, "win_length"),
    ("video-crop-above-one", {"video": {"crop": 1.5}}, "crop"),
    ("fold-out-of-range", {"fold": 7, "actor_split": None}, "fold"),
    ("actor-in-two-splits", {"actor_split": {"train": [1], "val": [1], "test": [2]}}, "1"),
]:

    def _make(ctx, _kwargs=_kwargs, _culprit=_culprit):
        ctx.roots.copy("ravdess", ctx.tmp)
        return lambda: _ravdess(ctx, **_kwargs), _culprit

    case(f"ravdess-{_name}", "ravdess", "unchecked", ValueError)(_make)


@case("ravdess-same-recording-twice", "ravdess", "read", ValueError)
def _(ctx):
    ctx.roots.copy("ravdess", ctx.tmp)
    wav = next(_actor(ctx, 9).glob("03-*.wav"))
    second = ctx.tmp / "ravdess" / "extracted_twice" / "Actor_09"  # a zip extracted twice
    second.mkdir(parents=True)
    shutil.copy(wav, second / wav.name)
    return lambda: _ravdess(ctx).clips(), wav.name


@case("ravdess-corrupt-wav", "ravdess", "file", CorruptClipError)
def _(ctx):
    ctx.roots.copy("ravdess", ctx.tmp)
    wav = next(_actor(ctx, 5).glob("03-*.wav"))
    wav.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    return lambda: _ravdess(ctx).setup(), str(wav)


def _bad_name(ctx: Ctx) -> Path:
    ctx.roots.copy("ravdess", ctx.tmp)
    bad = _actor(ctx, 9) / "03-01-09-01-01-01-09.wav"  # emotion 09 does not exist
    shutil.copy(next(_actor(ctx, 9).glob("03-*.wav")), bad)
    return bad


def _unpaired(ctx: Ctx) -> Path:
    ctx.roots.copy("ravdess", ctx.tmp)
    wav = next(_actor(ctx, 9).glob("03-*.wav"))
    for video in _actor(ctx, 9).glob(f"0[12]{wav.stem[2:]}.mp4"):
        video.unlink()  # the utterance keeps its audio only
    return wav


def _short(ctx: Ctx) -> Path:
    ctx.roots.copy("ravdess", ctx.tmp)
    wav = next(_actor(ctx, 1).glob("03-*.wav"))
    rfx.write_wav(wav, rfx.tone(440.0, 0.2))  # 0.2 s where 0.5 s are read
    return wav


for _what, _make_bad, _action in [
    ("bad-name-skipped", _bad_name, lambda dm: dm.clips()),
    ("unpaired-clip-left-out", _unpaired, lambda dm: dm.clips()),
    ("short-wav-padded", _short, lambda dm: dm.setup()),
]:

    def _warn(ctx, _make_bad=_make_bad, _action=_action):
        bad = _make_bad(ctx)
        ctx.monkeypatch.setenv("NTDH_STRICT", "0")
        return lambda: _action(_ravdess(ctx)), bad.name

    def _strict(ctx, _make_bad=_make_bad, _action=_action):
        bad = _make_bad(ctx)
        ctx.monkeypatch.setenv("NTDH_STRICT", "1")
        return lambda: _action(_ravdess(ctx)), bad.name

    case(f"ravdess-{_what}", "ravdess", "lost", WARNS)(_warn)
    case(f"ravdess-{_what}-strict", "ravdess", "lost", DataError)(_strict)


def _corrupt_feature_cache(ctx: Ctx, damage: Callable[[Path], None]):
    ctx.roots.copy("ravdess", ctx.tmp)
    first = _ravdess(ctx)
    first.setup()
    (path,) = sorted((ctx.tmp / "cache").glob("audio-logmel-*.npz"))
    damage(path)

    def rebuild():
        again = _ravdess(ctx)
        again.setup()
        assert np.array_equal(
            again.split_tensors("train")["xa"], first.split_tensors("train")["xa"]
        )
        assert (path.parent / ".bad" / path.name).exists()

    return rebuild, path.name


@case("ravdess-feature-cache-truncated", "ravdess", "cache", WARNS)
def _(ctx):
    return _corrupt_feature_cache(ctx, lambda p: p.write_bytes(p.read_bytes()[:200]))


@case("ravdess-feature-cache-edited", "ravdess", "cache", WARNS)
def _(ctx):
    def edit(path: Path) -> None:
        with np.load(path) as npz:
            arrays = dict(npz)
        arrays["features"] = arrays["features"] + 1.0  # other numbers, same shapes
        with path.open("wb") as f:
            np.savez(f, **arrays)

    return _corrupt_feature_cache(ctx, edit)


@case("ravdess-released-csv-missing", "ravdess", "file", FileNotFoundError)
def _(ctx):
    (ctx.tmp / "features").mkdir()
    return lambda: _ravdess(ctx, features_dir=str(ctx.tmp / "features")), "spa_dl.csv"


@case("ravdess-released-label-not-a-class", "ravdess", "read", ValueError)
def _(ctx):
    folder = ctx.tmp / "features"
    rfx.write_released_features(folder)
    csv = folder / "data_file" / "spa_dl.csv"
    lines = csv.read_text().splitlines()
    lines[1] = ",".join([*lines[1].split(",")[:-1], "9"])
    csv.write_text("\n".join(lines) + "\n")
    return lambda: _ravdess(ctx, features_dir=str(folder)).setup(), "spa_dl.csv, line 2"


# nyu_ssc
def _ssc(ctx: Ctx, **kwargs) -> NYUSSCDataModule:
    options = {"grid": nfx.SSC_GRID, "scale": nfx.SSC_SCALE, **kwargs}
    return NYUSSCDataModule(root=str(ctx.tmp / "nyu_ssc"), **options)


def _ssc_damaged(ctx: Ctx, change: Callable[[dict], None]) -> Path:
    ctx.roots.copy("ssc", ctx.tmp)
    (bad,) = sorted((ctx.tmp / "nyu_ssc" / "test").glob("*.npz"))
    arrays = dict(np.load(bad))
    change(arrays)
    np.savez_compressed(bad, **arrays)
    return bad


@case("nyu_ssc-folder-missing", "nyu_ssc", "file", FileNotFoundError)
def _(ctx):
    return lambda: _ssc(ctx), "nyu_ssc"


@case("nyu_ssc-key-missing", "nyu_ssc", "file", ValueError)
def _(ctx):
    bad = _ssc_damaged(ctx, lambda a: a.pop("tsdf_lr"))
    return lambda: _ssc(ctx), bad.name


@case("nyu_ssc-target-transposed", "nyu_ssc", "read", ValueError)
def _(ctx):
    bad = _ssc_damaged(ctx, lambda a: a.update(target_lr=a["target_lr"].T.copy()))
    return lambda: _ssc(ctx), bad.name


@case("nyu_ssc-not-an-npz", "nyu_ssc", "file", ValueError)
def _(ctx):
    ctx.roots.copy("ssc", ctx.tmp)
    (bad,) = sorted((ctx.tmp / "nyu_ssc" / "test").glob("*.npz"))
    bad.write_bytes(b"PK\x03\x04 truncated")
    return lambda: _ssc(ctx), bad.name


for _name, _kwargs, _culprit in [
    ("val-fraction-one", {"val_fraction": 1.0}, "val_fraction"),
    ("teacher-unknown", {"teacher": "lidar"}, "teacher"),
    ("scale-zero", {"scale": 0}, "scale"),
]:

    def _make(ctx, _kwargs=_kwargs, _culprit=_culprit):
        ctx.roots.copy("ssc", ctx.tmp)
        return lambda: _ssc(ctx, **_kwargs), _culprit

    case(f"nyu_ssc-{_name}", "nyu_ssc", "unchecked", ValueError)(_make)


# nyu_depth
def _nyu(ctx: Ctx, **kwargs) -> NYUDepthDataModule:
    root = ctx.tmp / "nyu_depth_v2"
    return NYUDepthDataModule(root=str(root), **{"depth_stats": (2.0, 0.5), **kwargs})


@case("nyu_depth-mat-missing", "nyu_depth", "file", FileNotFoundError)
def _(ctx):
    ctx.roots.copy("nyu", ctx.tmp)
    (ctx.tmp / "nyu_depth_v2" / "nyu_depth_v2_labeled.mat").unlink()
    return lambda: _nyu(ctx), "nyu_depth_v2_labeled.mat"


@case("nyu_depth-dataset-missing-in-mat", "nyu_depth", "file", ValueError)
def _(ctx):
    ctx.roots.copy("nyu", ctx.tmp)
    mat = ctx.tmp / "nyu_depth_v2" / "nyu_depth_v2_labeled.mat"
    nfx.write_labelled_mat(mat, nfx.labelled_arrays(4), drop=("depths",))
    return lambda: _nyu(ctx), "depths"


@case("nyu_depth-split-past-the-images", "nyu_depth", "read", ValueError)
def _(ctx):
    ctx.roots.copy("nyu", ctx.tmp)
    nfx.write_splits(ctx.tmp / "nyu_depth_v2" / "meta" / "splits.mat", [1, 3], [2, 9])
    return lambda: _nyu(ctx), "splits.mat"


@case("nyu_depth-mat-not-hdf5", "nyu_depth", "file", ValueError)
def _(ctx):
    ctx.roots.copy("nyu", ctx.tmp)
    (ctx.tmp / "nyu_depth_v2" / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 5.0 junk" * 40)
    return lambda: _nyu(ctx), "nyu_depth_v2_labeled.mat"


for _name, _kwargs, _culprit in [
    ("num-classes-20", {"num_classes": 20}, "num_classes"),
    ("val-fraction-negative", {"val_fraction": -0.1}, "val_fraction"),
    ("depth-stats-word", {"depth_stats": "test"}, "depth_stats"),
    ("teacher-unknown", {"teacher": "lidar"}, "teacher"),
]:

    def _make(ctx, _kwargs=_kwargs, _culprit=_culprit):
        ctx.roots.copy("nyu", ctx.tmp)
        return lambda: _nyu(ctx, **_kwargs), _culprit

    case(f"nyu_depth-{_name}", "nyu_depth", "unchecked", ValueError)(_make)


# semantic_kitti
def _kitti(ctx: Ctx, **kwargs) -> SemanticKittiDataModule:
    options = {"train_sequences": (0,), "val_sequences": (8,), "test_sequences": (8,)}
    return SemanticKittiDataModule(root=str(ctx.tmp), **{**options, **KITTI_SMALL, **kwargs})


def _seq(ctx: Ctx, seq: int = 0) -> Path:
    return ctx.tmp / "semantic_kitti" / "dataset" / "sequences" / f"{seq:02d}"


@case("semantic_kitti-yaml-missing", "semantic_kitti", "file", FileNotFoundError)
def _(ctx):
    ctx.roots.copy("kitti", ctx.tmp)
    (ctx.tmp / "semantic_kitti" / "semantic-kitti.yaml").unlink()
    return lambda: _kitti(ctx), "semantic-kitti.yaml"


@case("semantic_kitti-yaml-not-yaml", "semantic_kitti", "file", ValueError)
def _(ctx):
    ctx.roots.copy("kitti", ctx.tmp)
    (ctx.tmp / "semantic_kitti" / "semantic-kitti.yaml").write_text("labels: [unclosed\n")
    return lambda: _kitti(ctx), "semantic-kitti.yaml"


@case("semantic_kitti-image-missing", "semantic_kitti", "file", FileNotFoundError)
def _(ctx):
    ctx.roots.copy("kitti", ctx.tmp)
    (_seq(ctx) / "image_2" / "000001.png").unlink()
    return lambda: _kitti(ctx).setup(), "000001.png"


@case("semantic_kitti-calib-without-p2", "semantic_kitti", "file", ValueError)
def _(ctx):
    ctx.roots.copy("kitti", ctx.tmp)
    calib = _seq(ctx) / "calib.txt"
    kept = [line for line in calib.read_text().splitlines() if not line.startswith("P2:")]
    calib.write_text("\n".join(kept) + "\n")
    return lambda: _kitti(ctx).setup(), "calib.txt"


@case("semantic_kitti-label-not-uint32", "semantic_kitti", "read", ValueError)
def _(ctx):
    ctx.roots.copy("kitti", ctx.tmp)
    label = _seq(ctx) / "labels" / "000000.label"
    label.write_bytes(label.read_bytes()[:-3])  # a torn last label
    return lambda: _kitti(ctx).train_dataloader().dataset[0], "000000.label"


for _name, _kwargs, _culprit in [
    ("teacher-unknown", {"teacher": "radar"}, "teacher"),
    ("crop-size-zero", {"crop_size": (0, 64)}, "crop_size"),
]:

    def _make(ctx, _kwargs=_kwargs, _culprit=_culprit):
        ctx.roots.copy("kitti", ctx.tmp)
        return lambda: _kitti(ctx, **_kwargs), _culprit

    case(f"semantic_kitti-{_name}", "semantic_kitti", "unchecked", ValueError)(_make)


# the command line: experiment scripts' --set, and ntdh
def _sweep(ctx: Ctx, *argv: str) -> Callable[[], Any]:
    from experiments.gap_sweep import GapSweep

    dirs = ["--results-dir", str(ctx.tmp / "r"), "--runs-dir", str(ctx.tmp / "t")]
    return lambda: GapSweep.main(["--seeds", "1", *argv, *dirs, "--cache-dir", str(ctx.tmp)])


for _name, _value, _culprit in [
    ("lr-not-a-number", "student.lr=fast", "student.lr"),
    ("epochs-fraction", "teacher.epochs=2.5", "teacher.epochs"),
    ("unknown-key", "student.learning_rate=0.1", "student.learning_rate"),
    ("lam-word", "student.lam=half", "student.lam"),
    ("no-equals", "student.lr", "student.lr"),
    ("weight-negative", "distiller.weight=-1", "distiller.weight"),
]:

    def _make(ctx, _value=_value, _culprit=_culprit):
        return _sweep(ctx, "--set", _value), _culprit

    klass = "unchecked" if _name in ("weight-negative", "unknown-key") else "read"
    case(f"cli-set-{_name}", "cli", klass, SystemExit)(_make)


@case("cli-status-no-sweep", "cli", "file", SystemExit)
def _(ctx):
    folder = ctx.tmp / "results" / "fig3"

    def run():
        raise SystemExit(cli.main(["status", str(folder)]))

    return run, "grid.json"


# the store
def _store_with(ctx: Ctx, extra_lines: list[str]) -> ResultStore:
    store = ResultStore(ctx.tmp / "results")
    store.append(make_record("abc", "fig3", {"seed": 0}, {"acc": 0.5}))
    with store.path.open("a") as f:
        f.writelines(line + "\n" for line in extra_lines)
    store.append(make_record("def", "fig3", {"seed": 1}, {"acc": 0.6}))
    return store


for _name, _line in [
    ("torn-line", '{"run_id": "ghi", "sta'),
    ("json-list", "[1, 2, 3]"),
    ("json-without-run-id", '{"status": "done", "metrics": {}}'),
    ("metrics-not-an-object", '{"run_id": "x", "status": "done", "config": {}, "metrics": 3}'),
    ("status-not-a-string", '{"run_id": "x", "status": 1}'),
]:

    def _make(ctx, _line=_line):
        store = _store_with(ctx, [_line])

        def read():  # the two records around the bad line survive; the bad one is counted
            assert sorted(store.done_ids()) == ["abc", "def"] and store.skipped == 1

        return read, f"{store.path}:2"

    case(f"store-{_name}", "store", "store", WARNS)(_make)


@case("store-grid-json-damaged", "store", "store", WARNS)
def _(ctx):
    store = _store_with(ctx, [])
    grid = store.root / "grid.json"
    grid.write_text('{"experiment": "fig3", "runs": {"abc": "a", ')

    def status():
        got = sweep_status(store.root)
        assert got.done == 2 and got.grid_rebuilt and "rebuilt" in got.render()
        assert json.loads(grid.read_text())["rebuilt"] and grid.with_suffix(".json.bad").exists()

    return status, "grid.json"


@case("store-grid-json-not-a-grid", "store", "store", WARNS)
def _(ctx):
    store = _store_with(ctx, [])
    (store.root / "grid.json").write_text('["abc", "def"]')
    return lambda: sweep_status(store.root), "grid.json"


# verdicts on no or bad data
@case("verdicts-cell-without-runs", "verdicts", "verdict", NOT_JUDGED)
def _(ctx):
    return lambda: paired_verdict("kd helps", {0: 0.9, 1: 0.8}, {}, ("kd", "no kd")), "no kd"


@case("verdicts-one-paired-seed", "verdicts", "verdict", NOT_JUDGED)
def _(ctx):
    verdict = lambda: paired_verdict("kd helps", {0: 0.9}, {0: 0.8, 1: 0.7}, ("kd", "no kd"))  # noqa: E731
    return verdict, "1 paired seed"


@case("verdicts-nan-cells", "verdicts", "verdict", NOT_JUDGED)
def _(ctx):
    nan = float("nan")
    return (
        lambda: paired_verdict("kd helps", {0: nan, 1: nan}, {0: 0.8, 1: 0.7}, ("kd", "no kd")),
        "0 paired seed",
    )


@case("verdicts-failed-cell", "verdicts", "verdict", NOT_JUDGED)
def _(ctx):
    return (
        lambda: verdict_from_differences(
            "mask helps", {0: 0.1}, "true vs random", missing="the random-mask runs failed"
        ),
        "random-mask runs failed",
    )


# --- the test ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("datamodule", "klass", "expected", "make"),
    [pytest.param(dm, k, e, m, id=n) for n, dm, k, e, m in CASES],
)
def test_bad_input_is_refused_or_recovered_naming_the_culprit(
    datamodule, klass, expected, make, tmp_path, roots, monkeypatch, caplog, capsys
):
    thunk, culprit = make(Ctx(tmp_path, roots, monkeypatch))
    caplog.set_level(logging.WARNING)
    if expected == WARNS:
        thunk()
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(culprit in m for m in warned), warned
    elif expected == NOT_JUDGED:
        verdict = thunk()
        assert verdict.status == NOT_JUDGED and culprit in verdict.evidence, verdict.evidence
    else:
        with pytest.raises(expected) as info:
            thunk()
        message = str(info.value)
        if expected is SystemExit:
            assert info.value.code == 2
            message += capsys.readouterr().err
        assert culprit in message, message


def test_the_catalogue_covers_every_datamodule_and_the_cli_with_60_cases():
    from datamodules import DATAMODULES

    covered = {dm for _, dm, *_ in CASES}
    assert set(DATAMODULES) <= covered and "cli" in covered
    assert len(CASES) >= 60 and len({name for name, *_ in CASES}) == len(CASES)
