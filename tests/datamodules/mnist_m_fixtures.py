"""Tiny MNIST / BSDS500 / MNIST-M fixtures in the datasets' real on-disk formats.

* IDX files written byte by byte per the IDX specification (LeCun et al.): two zero bytes, a
  type code, the number of dimensions, big-endian uint32 sizes, big-endian data; gzipped or
  not, under torchvision's ``MNIST/raw`` layout.
* BSDS500: JPEG photos under ``BSR/BSDS500/data/images/{train,val,test}/``, and the same tree
  packed as ``BSR_bsds500.tgz`` with ``tarfile``.
* Published MNIST-M pickles in the authors' released form and in tf-dann's.

Run as a script to write a fake data root: ``python tests/datamodules/mnist_m_fixtures.py DIR``.
"""

from __future__ import annotations

import gzip
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}
MNIST_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` serialised as an IDX file."""
    dtype = np.dtype(array.dtype).newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = IDX_CODES[dtype.str.lstrip("|")]
    header = bytes([0, 0, code, array.ndim])
    sizes = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + sizes + np.ascontiguousarray(array, dtype=dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def fake_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 28x28 images with a zero background and one random bright stroke (a
    rectangle of values 1..255), and random labels 0..9."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for image in images:
        top, left = rng.integers(2, 14, size=2)
        height, width = rng.integers(3, 12, size=2)
        image[top : top + height, left : left + width] = rng.integers(1, 256, (height, width))
    return images, rng.integers(0, 10, size=n).astype(np.uint8)


def write_mnist(
    mnist_root: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four IDX files under ``mnist_root/MNIST/raw``; returns ``{split: (images, labels)}``."""
    rng = np.random.default_rng(seed)
    raw = mnist_root / "MNIST" / "raw"
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = fake_digits(n, rng)
        write_idx(raw / MNIST_NAMES[split][0], images, gz)
        write_idx(raw / MNIST_NAMES[split][1], labels, gz)
        out[split] = (images, labels)
    return out


def write_bsds_folder(
    bsds_root: Path, n_train: int = 3, colour: tuple[int, int, int] | None = None, seed: int = 0
) -> Path:
    """``bsds_root/BSR/BSDS500/data/images/{train,val,test}/*.jpg`` (small photos).

    ``colour`` makes every training photo that one uniform colour (backgrounds whose blend
    reveals the stroke exactly); otherwise they are random smooth colour fields.
    """
    rng = np.random.default_rng(seed)
    images = bsds_root / "BSR" / "BSDS500" / "data" / "images"
    for split, n in (("train", n_train), ("val", 1), ("test", 1)):
        (images / split).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            height, width = (48, 64) if k % 2 else (64, 40)
            if colour is not None and split == "train":
                pixels = np.broadcast_to(np.array(colour, np.uint8), (height, width, 3))
            else:
                coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
                pixels = np.asarray(Image.fromarray(coarse).resize((width, height)))
            Image.fromarray(np.ascontiguousarray(pixels)).save(
                images / split / f"{100 + k}.jpg", quality=95
            )
    return images / "train"


def write_bsds_archive(bsds_root: Path, archive: Path) -> Path:
    """``BSR_bsds500.tgz`` holding the ``BSR/`` tree of ``bsds_root``, as distributed."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bsds_root / "BSR", arcname="BSR")
    return archive


def write_released_pickle(
    path: Path, train: np.ndarray, test: np.ndarray, train_labels: np.ndarray, test_labels=None
) -> Path:
    """The authors' released ``mnist_m_data.pkl``: ``train``/``val`` with labels."""
    data = {"train": train, "train_label": train_labels.astype(np.int32), "val": test}
    if test_labels is not None:
        data["val_label"] = test_labels.astype(np.int32)
    path.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def write_tf_dann_pickle(path: Path, train: np.ndarray, test: np.ndarray) -> Path:
    """tf-dann's ``mnistm_data.pkl``: the first 5000 training images as ``valid``."""
    data = {"train": train[5000:], "valid": train[:5000], "test": test}
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "fake_data")
    write_mnist(root / "mnist")
    write_bsds_folder(root / "bsds")
    print(f"wrote a fake MNIST + BSDS500 data root under {root}")
