"""MNIST / MNIST-M and digits: the IDX reader, the MNIST-M recipe, pairing, noise, errors.

Fixtures are written in the real formats by ``mnist_m_fixtures.py``; the real MNIST test files
and BSDS500 photos under ``../shared/data`` are used where present.
"""

from __future__ import annotations

import gzip
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import DATAMODULES, DigitsDataModule, MNISTMDataModule, build_datamodule
from datamodules.idx import IDXFormatError, read_idx
from datamodules.mnist_m import load_published_mnist_m, noisy_inputs
from datamodules.mnist_m_generate import blend, find_backgrounds, generate_split

sys.path.insert(0, str(Path(__file__).parent))
import mnist_m_fixtures as fx

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SHARED_MNIST = SHARED / "mnist" / "MNIST" / "raw"
SHARED_BSDS = SHARED / "bsds"
IN_CI = os.environ.get("CI") == "true"  # there a missing shared file fails, never skips
needs_shared_mnist = pytest.mark.skipif(
    not (SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").exists() and not IN_CI,
    reason="no shared MNIST files",
)
needs_shared_bsds = pytest.mark.skipif(
    not (SHARED_BSDS / "BSR").exists() and not IN_CI, reason="no shared BSDS500 photos"
)
NO_NOISE = {"mnist": 0.0, "mnist_m": 0.0}
DARK = (20, 40, 60)  # uniform fixture photos: the blend then reveals the stroke exactly


@pytest.fixture
def data_root(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A data root with fake MNIST (60 / 20 images, gzipped) and uniform dark BSDS photos."""
    mnist = fx.write_mnist(tmp_path / "data" / "mnist", n_train=60, n_test=20)
    fx.write_bsds_folder(tmp_path / "data" / "bsds", colour=DARK)
    return tmp_path / "data", mnist


def _mnist_m(root: Path, **kwargs) -> MNISTMDataModule:
    return MNISTMDataModule(root=str(root), cache_dir=str(root / "cache"), **kwargs)


# --- IDX ------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 2, 1, 0, 4], dtype=np.uint8),
        np.array([[-70000, 1], [2, 2**30]], dtype=np.int32),
        np.linspace(-1, 1, 6, dtype=np.float32),
    ],
    ids=["ubyte-3d", "ubyte-1d", "int32", "float32"],
)
def test_idx_reader_reads_files_written_in_the_idx_format(tmp_path, array, gz):
    path = fx.write_idx(tmp_path / "x-idx-ubyte", array, gz=gz)
    read = read_idx(path)
    assert read.shape == array.shape and read.dtype.kind == array.dtype.kind
    np.testing.assert_array_equal(read, array)


@needs_shared_mnist
def test_idx_reader_reads_the_real_mnist_files():
    labels = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz", ndim=1)
    assert len(labels) == 10000 and labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    train_labels = read_idx(SHARED_MNIST / "train-labels-idx1-ubyte.gz", ndim=1)
    assert len(train_labels) == 60000 and train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    images = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz", ndim=3)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert images.mean() == pytest.approx(33.79, abs=0.01)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("cut", "problem"),
    [(-5, "truncated: the header declares shape"), (6, "truncated header"), (2, "truncated")],
)
def test_truncated_idx_raises_naming_the_file(tmp_path, gz, cut, problem):
    data = fx.idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8))
    data = data[:cut]
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(IDXFormatError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_stream_raises_naming_the_file(tmp_path):
    data = gzip.compress(fx.idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IDXFormatError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "header",
    [b"\x89PNG\r\n\x1a\n", b"\x00\x01\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00"],
    ids=["png", "nonzero-prefix", "unknown-type", "zero-dims"],
)
def test_wrong_magic_raises_naming_the_file(tmp_path, header):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(header + bytes(16))
    with pytest.raises(IDXFormatError, match="wrong magic number") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_labels_file_read_as_images_raises(tmp_path):
    path = fx.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(IDXFormatError, match="declares 1 dimension"):
        read_idx(path, ndim=3)


# --- the MNIST-M recipe ---------------------------------------------------------------------
def _photos(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 9 * k, 50 + 7 * k, 3), dtype=np.uint8) for k in range(3)]


def test_blend_inverts_the_crop_under_the_stroke_and_keeps_it_elsewhere():
    digits, _ = fx.fake_digits(200, np.random.default_rng(1))
    photos = _photos()
    patches = blend(np.zeros_like(digits), photos, np.random.default_rng(5))
    out = blend(digits, photos, np.random.default_rng(5))
    assert out.shape == (200, 28, 28, 3) and out.dtype == np.uint8
    stroke = (digits > 0)[..., None]
    np.testing.assert_array_equal(out, np.where(stroke, 255 - patches, patches))
    assert (out != patches)[np.broadcast_to(stroke, out.shape)].all()  # digit differs from bg
    np.testing.assert_array_equal(out, blend(digits, photos, np.random.default_rng(5)))
    assert not np.array_equal(out, blend(digits, photos, np.random.default_rng(6)))


def test_archive_and_folder_give_the_same_cached_mnist_m(tmp_path, monkeypatch):
    folder = fx.write_bsds_folder(tmp_path / "bsds", n_train=3)
    archive = fx.write_bsds_archive(tmp_path / "bsds", tmp_path / "dl" / "BSR_bsds500.tgz")
    assert find_backgrounds(tmp_path / "bsds").kind == "folder"
    assert find_backgrounds(tmp_path / "dl").kind == "archive"
    digits, _ = fx.fake_digits(30, np.random.default_rng(0))
    from_folder = generate_split(digits, "train", find_backgrounds(folder), tmp_path / "c1")
    from_archive = generate_split(digits, "train", find_backgrounds(archive), tmp_path / "c2")
    np.testing.assert_array_equal(from_folder, from_archive)
    assert len(list((tmp_path / "c1").glob("mnist_m_train_*.npz"))) == 1
    assert not list((tmp_path / "c1").glob(".*tmp"))  # atomic write left nothing behind

    def no_generation(*args, **kwargs):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr("datamodules.mnist_m_generate.blend", no_generation)
    cached = generate_split(digits, "train", find_backgrounds(folder), tmp_path / "c1")
    np.testing.assert_array_equal(cached, from_folder)
    other_seed = tmp_path / "c3"
    with pytest.raises(AssertionError, match="cache"):  # the seed is part of the cache key
        generate_split(digits, "train", find_backgrounds(folder), other_seed, seed=1)


@needs_shared_mnist
@needs_shared_bsds
def test_mnist_m_from_the_real_mnist_and_bsds500_photos(tmp_path):
    digits = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz", ndim=3)[:300]
    source = find_backgrounds(SHARED_BSDS)
    assert len(source.listing()) == 24
    images = generate_split(digits, "test", source, tmp_path)
    assert images.shape == (300, 28, 28, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, generate_split(digits, "test", source, tmp_path / "b"))
    stroke = digits > 0
    fg, bg = images[stroke].astype(float), images[~stroke].astype(float)
    assert abs(fg.mean() - bg.mean()) > 5  # the stroke is the photo's colour inverse
    assert images.std(axis=(1, 2)).mean() > 20  # colourful, textured backgrounds


# --- the paired datamodule ------------------------------------------------------------------
def test_pairing_preserves_the_digit_and_its_label_through_the_loader(data_root):
    root, mnist = data_root
    dm = _mnist_m(root, noise=NO_NOISE, batch_size=16, seed=3)
    assert dm.input_shapes() == ((1, 28, 28), (3, 28, 28))
    for batch in dm.train_dataloader():
        images, labels = (x[batch["index"].numpy()] for x in mnist["train"])
        assert batch["xa"].shape[1:] == (1, 28, 28) and batch["xb"].shape[1:] == (3, 28, 28)
        assert batch["xa"].dtype == batch["xb"].dtype == torch.float32
        torch.testing.assert_close(batch["xa"][:, 0], torch.from_numpy(images) / 127.5 - 1)
        stroke_in_mnist_m = (batch["xb"] > 0).all(dim=1)  # dark photo, bright inverse
        assert torch.equal(stroke_in_mnist_m, torch.from_numpy(images > 0))
        assert torch.equal(batch["y"], torch.from_numpy(labels.astype(np.int64)))
    test = dm.split_tensors("test")
    assert len(test["y"]) == 20 and dm.split_tensors("val")["xb"] is test["xb"]  # val = test


def test_teacher_modality_is_swappable(data_root):
    root, _ = data_root
    default, swapped = _mnist_m(root), _mnist_m(root, teacher="mnist_m")
    assert (default.teacher, default.student) == ("mnist", "mnist_m")
    assert swapped.input_shapes() == ((3, 28, 28), (1, 28, 28))
    a, b = default.split_tensors("train"), swapped.split_tensors("train")
    # each modality keeps its own noise level and draws, whichever role it plays
    assert torch.equal(a["xa"], b["xb"]) and torch.equal(a["xb"], b["xa"])
    with pytest.raises(ValueError, match="teacher must be one of"):
        _mnist_m(root, teacher="svhn")


def test_noise_is_clipped_uniform_per_modality_and_deterministic_by_seed(data_root):
    root, _ = data_root
    clean = _mnist_m(root, noise=NO_NOISE).split_tensors("train")
    noisy = _mnist_m(root, noise={"mnist": 0.5, "mnist_m": 0.0}, data_seed=1)
    again = _mnist_m(root, noise={"mnist": 0.5, "mnist_m": 0.0}, data_seed=1)
    other = _mnist_m(root, noise={"mnist": 0.5, "mnist_m": 0.0}, data_seed=2)
    x = noisy.split_tensors("train")
    added = (x["xa"] - clean["xa"]) / 2  # back on the [0, 1] scale
    assert added.min() >= 0 and added.max() <= 0.5 + 1e-6
    assert x["xa"].max() <= 1 and added.mean() > 0.1  # clipped, and some noise was added
    assert torch.equal(x["xb"], clean["xb"])  # level 0: the other modality is untouched
    assert torch.equal(x["xa"], again.split_tensors("train")["xa"])
    assert not torch.equal(x["xa"], other.split_tensors("train")["xa"])
    with pytest.raises(ValueError, match="unknown"):
        _mnist_m(root, noise={"svhn": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        _mnist_m(root, noise={"mnist": -1.0})


def test_noisy_inputs_applies_clip_of_x_plus_level_times_uniform():
    images = np.full((3, 28, 28), 51, dtype=np.uint8)  # 0.2 on the [0, 1] scale
    rng = np.random.default_rng(0)
    uniform = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    expected = np.clip(0.2 + 2.0 * uniform, 0, 1) * 2 - 1
    np.testing.assert_allclose(noisy_inputs(images, 2.0, rng).numpy(), expected, atol=1e-6)


# --- files: missing, download, availability -------------------------------------------------
def test_missing_mnist_names_the_expected_paths_and_how_to_get_them(tmp_path):
    (tmp_path / "bsds").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        _mnist_m(tmp_path)
    message = str(info.value)
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert f"{raw / name}[.gz]" in message
    assert "download=True" in message and "NTDH_DATA" in message
    assert not MNISTMDataModule.is_available(str(tmp_path))


def test_missing_bsds_names_the_archive_and_the_folder(data_root, tmp_path):
    root, _ = data_root
    with pytest.raises(FileNotFoundError) as info:
        _mnist_m(root, bsds=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "BSR_bsds500.tgz") in message
    assert "BSR/BSDS500/data/images/train" in message and "http" in message


def test_offline_download_fails_with_the_expected_paths(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there
    fx.write_bsds_folder(tmp_path / "bsds")
    dm = _mnist_m(tmp_path, download=True)  # construction defers to prepare_data
    with pytest.raises(FileNotFoundError, match="the download failed") as info:
        dm.prepare_data()
    assert str(tmp_path / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte") in str(info.value)


def test_is_available_needs_mnist_and_bsds(data_root):
    root, _ = data_root
    assert MNISTMDataModule.is_available(str(root))
    assert DigitsDataModule.is_available()
    assert {"mnist_m", "digits"} <= set(DATAMODULES)


# --- published MNIST-M ----------------------------------------------------------------------
N_TRAIN, N_TEST = 5040, 30  # tf-dann's form needs more than its 5000 validation images


def _labels() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"train": rng.integers(0, 10, N_TRAIN), "test": rng.integers(0, 10, N_TEST)}


def _published_images() -> tuple[np.ndarray, np.ndarray]:
    train = np.zeros((N_TRAIN, 28, 28, 3), dtype=np.uint8)
    test = np.zeros((N_TEST, 28, 28, 3), dtype=np.uint8)
    train[:, 0, 0, 0] = np.arange(N_TRAIN) % 256  # a per-index tag
    train[:, 0, 0, 1] = np.arange(N_TRAIN) // 256
    return train, test


def test_published_forms_are_read_paired_by_index(tmp_path):
    train, test = _published_images()
    labels = _labels()
    released = fx.write_released_pickle(
        tmp_path / "mnist_m_data.pkl", train, test, labels["train"], labels["test"]
    )
    tf_dann = fx.write_tf_dann_pickle(tmp_path / "mnistm_data.pkl", train, test)
    generic = tmp_path / "generic.pkl"
    generic.write_bytes(pickle.dumps({"train": train, "test": test}))
    for path in (released, tf_dann, generic):
        out = load_published_mnist_m(path, labels)
        np.testing.assert_array_equal(out["train"], train)  # index i is MNIST's image i
        assert out["test"].shape == (N_TEST, 28, 28, 3)


def test_published_pickle_with_other_order_or_layout_is_rejected(tmp_path):
    train, test = _published_images()
    labels = _labels()
    shuffled = fx.write_released_pickle(
        tmp_path / "shuffled.pkl", train, test, np.roll(labels["train"], 1)
    )
    with pytest.raises(ValueError, match="cannot be paired by index") as info:
        load_published_mnist_m(shuffled, labels)
    assert str(shuffled) in str(info.value)
    short = tmp_path / "short.pkl"
    short.write_bytes(pickle.dumps({"train": train[:-1], "test": test}))  # Ganin's: fewer
    with pytest.raises(ValueError, match=rf"expected uint8 \({N_TRAIN}, 28, 28, 3\)"):
        load_published_mnist_m(short, labels)


def test_ganin_image_folder_release_is_rejected_as_unpairable(data_root, tmp_path):
    root, _ = data_root
    release = tmp_path / "mnist_m"
    (release / "mnist_m_train").mkdir(parents=True)
    (release / "mnist_m_train_labels.txt").write_text("00000000.png 5\n")
    with pytest.raises(ValueError, match="cannot be paired with MNIST by index"):
        _mnist_m(root, published=str(release))


def test_published_pickle_cannot_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": Exploit()}))
    with pytest.raises(ValueError, match=r"refusing to load builtins\.print"):
        load_published_mnist_m(path, _labels())


# --- digits ---------------------------------------------------------------------------------
def test_digits_pairs_each_upsampled_digit_with_its_blend(monkeypatch):
    import sklearn.datasets

    uniform = np.broadcast_to(np.array(DARK, np.uint8), (60, 80, 3))
    monkeypatch.setattr(
        sklearn.datasets, "load_sample_images", lambda: type("B", (), {"images": [uniform]})
    )
    dm = DigitsDataModule(noise={"digits": 0.0, "digits_m": 0.0}, batch_size=500)
    assert (dm.teacher, dm.student) == ("digits", "digits_m")
    batch = next(iter(dm.train_dataloader()))
    grey = (batch["xa"][:, 0] + 1) * 127.5
    assert torch.equal((batch["xb"] > 0).all(dim=1), grey > DigitsDataModule.threshold + 0.5)
    train, test = dm.split_tensors("train"), dm.split_tensors("test")
    assert len(train["y"]) == 1200 and len(test["y"]) == 597
    assert torch.bincount(test["y"]).min() >= 55  # stratified


def test_digits_trains_end_to_end_through_lightning(lean_trainer):
    from models import build_model
    from ntdh_bench.module import UnimodalModule

    dm = build_datamodule("digits", batch_size=64)
    assert isinstance(dm, DigitsDataModule)
    shape_a, shape_b = dm.input_shapes()
    assert (shape_a, shape_b) == ((1, 28, 28), (3, 28, 28))
    model = build_model("mlp", shape_b, dm.num_classes, hidden=[1024, 256])
    module = UnimodalModule(model, 10, modality="xb", lr=1e-3)
    trainer = lean_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3
    results = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert 0.0 <= results["test/acc"] <= 1.0
    assert trainer.datamodule.split_tensors("test")["xb"].shape == (597, 3, 28, 28)


def test_modality_strength_reports_both_modalities_by_name():
    from ntdh_bench.strength import modality_strength

    strength = modality_strength("digits", train={"epochs": 3})
    assert set(strength) == {"digits", "digits_m"}
    assert all(0.25 < acc <= 1.0 for acc in strength.values())  # well above chance (0.1)


# --- source="t10k": MNIST-M from the 10,000 test digits alone -------------------------------
def test_t10k_source_splits_the_test_digits_when_the_training_images_are_missing(tmp_path):
    mnist = fx.write_mnist(tmp_path / "data" / "mnist", n_train=4, n_test=20)
    fx.write_bsds_folder(tmp_path / "data" / "bsds", colour=DARK)
    raw = tmp_path / "data" / "mnist" / "MNIST" / "raw"
    for name in raw.glob("train-*"):
        name.unlink()  # only t10k is at hand, as in ../shared/data
    with pytest.raises(FileNotFoundError, match="source='t10k'"):
        _mnist_m(tmp_path / "data")
    split = (12, 3, 5)  # scaled to the 20-digit fixture
    dm = _mnist_m(tmp_path / "data", source="t10k", t10k_split=split, noise=NO_NOISE, split_seed=1)
    dm.setup()
    images, labels = mnist["test"]
    seen = []
    for split, n in (("train", 12), ("val", 3), ("test", 5)):
        data = dm.split_tensors(split)
        assert len(data["y"]) == n
        for row in range(n):  # each row is one test digit, its grey image and its label
            match = np.flatnonzero(
                (images == ((data["xa"][row, 0] + 1) * 127.5).round().numpy()).all(axis=(1, 2))
            )
            assert labels[match[0]] == data["y"][row]
            seen.append(int(match[0]))
    assert sorted(seen) == list(range(20))  # a partition of the 20 digits


@needs_shared_mnist
@needs_shared_bsds
def test_t10k_source_builds_real_mnist_m_from_the_shared_files(tmp_path):
    dm = MNISTMDataModule(source="t10k", root=str(SHARED), cache_dir=str(tmp_path))
    dm.setup()
    sizes = {s: len(dm.split_tensors(s)["y"]) for s in ("train", "val", "test")}
    assert sizes == {"train": 7000, "val": 1000, "test": 2000}
    counts = torch.bincount(dm.split_tensors("train")["y"], minlength=10)
    assert counts.min() > 550 and counts.max() < 900  # every class, none dominant
