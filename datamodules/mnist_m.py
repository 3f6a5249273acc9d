"""Paired MNIST / MNIST-M digits (paper Sec. IV-A-2; Tables I-II, Figs. 7, 9a, 10), and the
offline ``digits`` variant.

Both modalities show the same digit: ``xa[i]`` in grey (MNIST) and ``xb[i]`` blended over a
colour photo (MNIST-M, :mod:`datamodules.mnist_m_generate`), paired by index; the teacher sees
MNIST as in the released code. Files: ``mnist/MNIST/raw/*-ubyte[.gz]`` (torchvision's layout)
and BSDS500 under the data root; ``source="t10k"`` splits MNIST's 10,000 test digits when the
training images are absent; a paired published MNIST-M pickle can replace the generation.
Modality strength is equalised by additive noise per modality, drawn once from ``data_seed``.
``docs/mnist_m.md`` gives the layouts, the published forms that can and cannot be paired, the
noise and the splits.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.base import PairedDataModule
from datamodules.idx import read_idx
from datamodules.mnist_m_generate import (
    BSDS_ARCHIVE,
    BSDS_TRAIN,
    BSDS_URL,
    SIZE,
    blend,
    find_backgrounds,
    generate_split,
)
from ntdh_core import paths

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
TF_VALIDATION = 5000  # TensorFlow's MNIST reader: validation = the first 5000 training images
_CHUNK = 8192  # rows converted to float at a time (bounds the memory of the noise draws)


def data_root(root: str | Path | None = None) -> Path:
    """The data root: ``root``, else ``$NTDH_DATA``, else ``./data``."""
    return Path(root) if root is not None else paths.data_root()


def mnist_raw_dir(mnist_root: str | Path) -> Path:
    """Where torchvision's ``MNIST(mnist_root)`` keeps the IDX files."""
    return Path(mnist_root) / "MNIST" / "raw"


def find_mnist_file(raw_dir: str | Path, name: str) -> Path | None:
    """``raw_dir/name``, else ``raw_dir/name.gz``, else ``None``."""
    for candidate in (Path(raw_dir) / name, Path(raw_dir) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_mnist_files(
    raw_dir: str | Path, splits: tuple[str, ...] = ("train", "test")
) -> list[str]:
    """The IDX files of ``splits`` that are not in ``raw_dir``."""
    return [
        name
        for split in splits
        for name in MNIST_FILES[split]
        if not find_mnist_file(raw_dir, name)
    ]


def mnist_missing_message(mnist_root: Path, missing: list[str], problem: str = "") -> str:
    raw = mnist_raw_dir(mnist_root)
    expected = "\n".join(f"  {raw / name}[.gz]" for pair in MNIST_FILES.values() for name in pair)
    return (
        f"MNIST not found{problem}: missing {', '.join(missing)}. Expected the IDX files, each "
        f"gzipped (.gz) or not, in torchvision's layout:\n{expected}\n"
        f"Get them with download=True (through torchvision; needs internet), or "
        f"`python -c \"from torchvision.datasets import MNIST; MNIST('{mnist_root}', "
        f'download=True)"`, or copy the four .gz files from {MNIST_URL} into {raw}. '
        f"The data root is $NTDH_DATA (default ./data), or pass root=..."
    )


def download_mnist(mnist_root: str | Path) -> None:
    """Fetch the four MNIST files into ``mnist_root/MNIST/raw`` through torchvision."""
    from torchvision.datasets import MNIST

    mnist_root = Path(mnist_root)
    try:
        MNIST(str(mnist_root), train=True, download=True)
    except (RuntimeError, OSError) as err:
        missing = missing_mnist_files(mnist_raw_dir(mnist_root))
        reason = " ".join(str(err).split())
        raise FileNotFoundError(
            mnist_missing_message(mnist_root, missing, f" and the download failed ({reason})")
        ) from err


def load_mnist(raw_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` ("train" or "test"): uint8 images ``(N, 28, 28)``, int64 labels ``(N,)``."""
    names = MNIST_FILES[split]
    paths = [find_mnist_file(raw_dir, name) for name in names]
    missing = [name for name, path in zip(names, paths, strict=True) if path is None]
    if missing:
        root = Path(raw_dir).parent.parent
        raise FileNotFoundError(mnist_missing_message(root, missing))
    images, labels = read_idx(paths[0], ndim=3), read_idx(paths[1], ndim=1)
    if images.dtype != np.uint8 or images.shape[1:] != (SIZE, SIZE):
        raise ValueError(
            f"{paths[0]}: expected uint8 images of 28x28, got {images.dtype} {images.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{paths[0]} holds {len(images)} images but {paths[1]} {len(labels)} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{paths[1]}: labels outside 0..9 ({labels.min()}..{labels.max()})")
    return images, labels.astype(np.int64)


# --- published MNIST-M ---------------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a pickle can run arbitrary code."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        (f"numpy.{core}.{module}", name)
        for core in ("core", "_core")
        for module, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),  # numpy >= 1.16 under pickle protocol 5
        )
    } | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # protocol 2 bytes

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays")


def _unpaired_release_message(path: Path) -> str:
    return (
        f"{path} looks like Ganin's MNIST-M image-folder release (mnist_m_*_labels.txt): it "
        f"holds 59,001 / 9,001 images, fewer than MNIST, with no record of which MNIST digit "
        f"each came from, so it cannot be paired with MNIST by index. Leave published=None to "
        f"generate a paired MNIST-M from MNIST and BSDS500 (the same recipe), or pass a pickle "
        f"that is paired by index (see datamodules/mnist_m.py)"
    )


def load_published_mnist_m(
    path: str | Path, mnist_labels: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A published MNIST-M pickle, as ``{"train", "test"}`` arrays paired with MNIST by index.

    Accepts the forms listed in the module docstring. Each split must hold one image per
    MNIST image (``len(mnist_labels[split])``), and labels stored in the pickle must equal
    MNIST's. Raises ``ValueError`` naming the file for any other layout.
    """
    path = Path(path)
    if path.is_dir():
        if any(path.rglob("mnist_m_*_labels.txt")):
            raise ValueError(_unpaired_release_message(path))
        raise FileNotFoundError(f"published={path} is a folder; expected a .pkl file")
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a readable MNIST-M pickle ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
    if "val" in data and "test" not in data:  # the authors' released form
        data = {
            "train": data.get("train"),
            "test": data["val"],
            "train_label": data.get("train_label"),
            "test_label": data.get("val_label"),
        }
    if "valid" in data and "train" in data:  # tf-dann's form
        data = {**data, "train": _concat(path, data["valid"], data["train"])}
    out = {}
    for split in MNIST_FILES:
        n = len(mnist_labels[split])
        images = data.get(split)
        if not isinstance(images, np.ndarray):
            raise ValueError(
                f"{path}: no {split!r} array; keys {sorted(data)}. Expected 'train' and 'test' "
                f"(or 'train'/'val', or tf-dann's 'train'/'valid'/'test')"
            )
        if images.shape != (n, SIZE, SIZE, 3) or images.dtype != np.uint8:
            raise ValueError(
                f"{path}: {split!r} is {images.dtype} {images.shape}; expected uint8 "
                f"({n}, 28, 28, 3), one image per MNIST {split} image in MNIST's order"
            )
        labels = data.get(f"{split}_label")
        if labels is not None and not np.array_equal(np.asarray(labels), mnist_labels[split]):
            raise ValueError(
                f"{path}: its {split} labels differ from MNIST's, so its images are not in "
                f"MNIST's order and cannot be paired by index"
            )
        out[split] = images
    return out


def _concat(path: Path, first: object, second: object) -> np.ndarray:
    if not (isinstance(first, np.ndarray) and isinstance(second, np.ndarray)):
        raise ValueError(f"{path}: 'valid' and 'train' must be arrays")
    if len(first) != TF_VALIDATION:
        raise ValueError(f"{path}: tf-dann's 'valid' has {TF_VALIDATION} images, not {len(first)}")
    return np.concatenate([first, second])


# --- noise and tensors ---------------------------------------------------------------------
def noisy_inputs(images: np.ndarray, level: float, rng: np.random.Generator) -> Tensor:
    """``clip(x / 255 + level * U[0, 1], 0, 1)`` mapped to [-1, 1], as float ``(N, C, 28, 28)``.

    ``images``: uint8 ``(N, 28, 28)`` (one channel) or ``(N, 28, 28, 3)`` (RGB).
    """
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    out = torch.empty(images.shape, dtype=torch.float32)
    for start in range(0, len(images), _CHUNK):
        x = images[start : start + _CHUNK].astype(np.float32) / 255.0
        if level:
            x += np.float32(level) * rng.random(x.shape, dtype=np.float32)
            np.clip(x, 0.0, 1.0, out=x)
        out[start : start + _CHUNK] = torch.from_numpy(x * 2.0 - 1.0)
    return out


class PairedDigitsDataModule(PairedDataModule):
    """A grey digit and its colour blend, paired by index; noise per modality.

    Subclasses name the two modalities (``modalities``: grey first) and provide
    :meth:`load_splits`.
    """

    num_classes = 10
    modalities: ClassVar[tuple[str, str]]
    default_noise: ClassVar[dict[str, float]]

    def __init__(
        self,
        teacher: str | None = None,
        noise: Mapping[str, float] | None = None,
        data_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        teacher = self.modalities[0] if teacher is None else teacher
        if teacher not in self.modalities:
            raise ValueError(f"teacher must be one of {self.modalities}, got {teacher!r}")
        unknown = set(noise or {}) - set(self.modalities)
        if unknown:
            raise ValueError(
                f"noise levels are keyed by modality {self.modalities}; unknown {sorted(unknown)}"
            )
        self.noise = {**self.default_noise, **(noise or {})}
        bad = {k: v for k, v in self.noise.items() if not float(v) >= 0}
        if bad:
            raise ValueError(f"noise levels must be >= 0, got {bad}")
        self.teacher = teacher
        self.student = next(m for m in self.modalities if m != teacher)
        self.data_seed = data_seed

    def load_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``{"train", "test"}: (grey uint8 (N, 28, 28), colour uint8 (N, 28, 28, 3), y)``."""
        raise NotImplementedError

    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        shapes = {self.modalities[0]: (1, SIZE, SIZE), self.modalities[1]: (3, SIZE, SIZE)}
        return shapes[self.teacher], shapes[self.student]

    def build_split_tensors(self) -> dict[str, dict[str, Tensor]]:
        splits = self.load_splits()
        out = {}
        for split_id, split in enumerate(s for s in ("train", "test", "val") if s in splits):
            grey, colour, y = splits[split]
            images = dict(zip(self.modalities, (grey, colour), strict=True))
            inputs = {}
            for modality_id, modality in enumerate(self.modalities):
                rng = np.random.default_rng([self.data_seed, split_id, modality_id])
                inputs[modality] = noisy_inputs(images[modality], self.noise[modality], rng)
            out[split] = {
                "xa": inputs[self.teacher],
                "xb": inputs[self.student],
                "y": torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
            }
        return {"train": out["train"], "val": out.get("val", out["test"]), "test": out["test"]}


class MNISTMDataModule(PairedDigitsDataModule):
    """MNIST (teacher by default) paired with MNIST-M (student) by index; see the module doc."""

    modalities = ("mnist", "mnist_m")
    default_noise: ClassVar[dict[str, float]] = {"mnist": 4.5, "mnist_m": 1.5}

    def __init__(
        self,
        teacher: str = "mnist",
        noise: Mapping[str, float] | None = None,
        source: Literal["full", "t10k"] = "full",
        split_seed: int = 0,
        t10k_split: tuple[int, int, int] = (7000, 1000, 2000),
        root: str | None = None,
        mnist_root: str | None = None,
        bsds: str | None = None,
        published: str | None = None,
        cache_dir: str | None = None,
        download: bool = False,
        blend_seed: int = 0,
        data_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(teacher, noise, data_seed, batch_size, eval_batch_size, seed)
        if source not in ("full", "t10k"):
            raise ValueError(f"source must be 'full' or 't10k', got {source!r}")
        self.source = source
        self.split_seed = split_seed
        self.t10k_split = tuple(int(n) for n in t10k_split)
        if len(self.t10k_split) != 3 or min(self.t10k_split) < 1:
            raise ValueError(f"t10k_split needs three positive sizes, got {t10k_split}")
        base = data_root(root)
        self.mnist_root = Path(mnist_root) if mnist_root is not None else base / "mnist"
        self.bsds = Path(bsds) if bsds is not None else base / "bsds"
        self.published = Path(published) if published is not None else None
        default_cache = paths.cache_root() / "mnist_m"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache
        self.download = download
        self.blend_seed = blend_seed
        self._check_files()  # fail now, not inside a Trainer; nothing is read yet

    @classmethod
    def is_available(cls, root: str | None = None) -> bool:
        base = data_root(root)
        return (
            not missing_mnist_files(mnist_raw_dir(base / "mnist"))
            and find_backgrounds(base / "bsds") is not None
        )

    @property
    def _mnist_splits(self) -> tuple[str, ...]:
        return ("test",) if self.source == "t10k" else ("train", "test")

    def _check_files(self) -> None:
        missing = missing_mnist_files(mnist_raw_dir(self.mnist_root), self._mnist_splits)
        if missing and not self.download:
            hint = ""
            if self.source == "full" and not missing_mnist_files(
                mnist_raw_dir(self.mnist_root), ("test",)
            ):
                hint = " (the t10k files are here: source='t10k' splits those 10,000 digits)"
            raise FileNotFoundError(mnist_missing_message(self.mnist_root, missing, hint))
        if self.published is not None and self.source == "t10k":
            raise ValueError("source='t10k' generates MNIST-M from the test digits; drop published")
        if self.published is not None:
            if not self.published.exists():
                raise FileNotFoundError(f"published MNIST-M {self.published} does not exist")
            if self.published.is_dir() and any(self.published.rglob("mnist_m_*_labels.txt")):
                raise ValueError(_unpaired_release_message(self.published))
        elif find_backgrounds(self.bsds) is None:
            raise FileNotFoundError(
                f"BSDS500 not found (MNIST-M is generated from its training photos): expected "
                f"the archive {self.bsds / BSDS_ARCHIVE} or the extracted photos "
                f"{self.bsds / BSDS_TRAIN}/*.jpg. Download {BSDS_ARCHIVE} from {BSDS_URL} "
                f"into {self.bsds} (no need to extract it), or pass bsds=<archive or folder>, "
                f"or published=<a paired MNIST-M pickle>"
            )

    def prepare_data(self) -> None:
        if self.download and missing_mnist_files(mnist_raw_dir(self.mnist_root)):
            download_mnist(self.mnist_root)

    def load_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        self.prepare_data()
        raw = mnist_raw_dir(self.mnist_root)
        if self.source == "t10k":
            return self._t10k_splits(raw)
        mnist = {split: load_mnist(raw, split) for split in MNIST_FILES}
        if self.published is not None:
            labels = {split: y for split, (_, y) in mnist.items()}
            colour = load_published_mnist_m(self.published, labels)
        else:
            source = find_backgrounds(self.bsds)
            colour = {
                split: generate_split(x, split, source, self.cache_dir, self.blend_seed)
                for split, (x, _) in mnist.items()
            }
        return {split: (x, colour[split], y) for split, (x, y) in mnist.items()}

    def _t10k_splits(self, raw: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """MNIST's 10,000 test digits (and their MNIST-M blends) split by ``split_seed`` into
        train / val / test (``t10k_split``): real MNIST-M where only t10k is at hand."""
        x, y = load_mnist(raw, "test")
        colour = generate_split(
            x, "test", find_backgrounds(self.bsds), self.cache_dir, self.blend_seed
        )
        order = np.random.default_rng(self.split_seed).permutation(len(y))
        n_train, n_val, n_test = self.t10k_split
        if n_train + n_val + n_test > len(y):
            raise ValueError(f"t10k_split {self.t10k_split} asks for more than {len(y)} digits")
        parts = {
            "train": order[:n_train],
            "val": order[n_train : n_train + n_val],
            "test": order[n_train + n_val : n_train + n_val + n_test],
        }
        return {name: (x[i], colour[i], y[i]) for name, i in parts.items()}


class DigitsDataModule(PairedDigitsDataModule):
    """scikit-learn's digits, upsampled, paired with their blend over its sample photos.

    Nothing to download; the offline default of the tests and of ``make table2
    DATASET=digits``. See the module docstring.
    """

    modalities = ("digits", "digits_m")
    default_noise: ClassVar[dict[str, float]] = {"digits": 2.5, "digits_m": 1.0}
    threshold = 127  # strokes: at least half intensity

    def __init__(
        self,
        teacher: str = "digits",
        noise: Mapping[str, float] | None = None,
        n_test: int = 597,
        blend_seed: int = 0,
        data_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(teacher, noise, data_seed, batch_size, eval_batch_size, seed)
        if not 10 <= n_test <= 1797 - 10:
            raise ValueError(f"n_test must leave >= 10 images in each split, got {n_test}")
        self.n_test = n_test
        self.blend_seed = blend_seed

    def load_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        from sklearn.datasets import load_digits, load_sample_images
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        grey = upsample_digits(digits.images)
        photos = [np.asarray(img, dtype=np.uint8) for img in load_sample_images().images]
        rng = np.random.default_rng([self.blend_seed, 2])
        colour = blend(grey, photos, rng, threshold=self.threshold)
        y = digits.target.astype(np.int64)
        train, test = train_test_split(
            np.arange(len(y)), test_size=self.n_test, stratify=y, random_state=0
        )
        return {
            split: (grey[idx], colour[idx], y[idx])
            for split, idx in (("train", np.sort(train)), ("test", np.sort(test)))
        }


def upsample_digits(images: np.ndarray, max_value: float = 16.0) -> np.ndarray:
    """``(N, 8, 8)`` digits in ``0..max_value`` -> uint8 ``(N, 28, 28)`` (bilinear)."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / max_value)[:, None]
    up = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (up[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
