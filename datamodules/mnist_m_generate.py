"""MNIST-M by the original recipe (Ganin & Lempitsky, ICML 2015, Sec. 5), cached to disk.

Each MNIST digit is binarised (``digit > threshold``, 0 by default) and blended over a random
28x28 crop of a random colour photo from the BSDS500 training images::

    mnist_m[i] = |patch_i - 255 * binary(mnist[i])|       (per RGB channel, uint8)

so the background shows the photo and the stroke shows its colour inverse. Sample ``i`` of
MNIST-M is made from sample ``i`` of MNIST, which keeps the two modalities paired by index.
The photo and the crop of every sample come from one ``numpy.random.Generator`` seeded by
``(seed, split)``: the same seed, digits and photos give the same images on every run.

The backgrounds are read from the BSDS500 archive ``BSR_bsds500.tgz`` as distributed, or from
its extracted folder ``BSR/BSDS500/data/images/train/*.jpg``; both give the same images in the
same (name-sorted) order. Generated splits are cached as ``.npz`` files whose name carries the
hash of everything that defines them (recipe, seed, split, a digest of the digits, the
backgrounds' names and sizes), written atomically, so concurrent runs may share a cache; each
holds the SHA-256 of its images, checked on read: a bad file is moved aside to
``<cache_dir>/.bad/`` with a warning naming it and regenerated. The cache folder defaults to
``$NTDH_CACHE/mnist_m``, which an experiment's ``--cache-dir`` sets.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ntdh_core.io import atomic_write

log = logging.getLogger(__name__)

RECIPE = "ganin-lempitsky-2015/v1"
BSDS_ARCHIVE = "BSR_bsds500.tgz"
BSDS_TRAIN = "BSR/BSDS500/data/images/train"
BSDS_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"
SIZE = 28
SPLIT_IDS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class BackgroundSource:
    """Where the BSDS500 training photos are: the archive or the extracted folder."""

    path: Path
    kind: str  # "archive" | "folder"

    def listing(self) -> list[tuple[str, int]]:
        """``(file name, size in bytes)`` of every training photo, sorted by name."""
        if self.kind == "folder":
            return sorted((p.name, p.stat().st_size) for p in self.path.glob("*.jpg"))
        with tarfile.open(self.path, "r:*") as tar:
            return sorted((Path(m.name).name, m.size) for m in _train_members(tar))

    def load(self) -> list[np.ndarray]:
        """The photos as ``(H, W, 3)`` uint8 arrays, in name order."""
        if self.kind == "folder":
            named = [(p.name, p.read_bytes(), p) for p in self.path.glob("*.jpg")]
        else:
            with tarfile.open(self.path, "r:*") as tar:
                named = [
                    (Path(m.name).name, tar.extractfile(m).read(), f"{self.path}:{m.name}")
                    for m in _train_members(tar)
                ]
        named.sort(key=lambda item: item[0])
        if not named:
            raise FileNotFoundError(f"{self.path} holds no BSDS500 training photos (*.jpg)")
        return [_decode(data, where) for _, data, where in named]


def _train_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    return [
        m
        for m in tar.getmembers()
        if m.isfile() and m.name.startswith(BSDS_TRAIN + "/") and m.name.endswith(".jpg")
    ]


def _decode(data: bytes, where: object) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"{where}: not a readable JPEG image ({err})") from None
    if array.shape[0] < SIZE or array.shape[1] < SIZE:
        raise ValueError(f"{where}: {array.shape[:2]} is smaller than a {SIZE}x{SIZE} crop")
    return array


def find_backgrounds(path: str | Path) -> BackgroundSource | None:
    """The BSDS500 source at ``path``: the archive itself, or a folder holding the archive, the
    extracted ``BSR/`` tree, or the training ``*.jpg`` files directly; ``None`` if absent."""
    path = Path(path)
    if path.is_file():
        return BackgroundSource(path, "archive")
    for candidate in (path / BSDS_TRAIN, path):
        if candidate.is_dir() and any(candidate.glob("*.jpg")):
            return BackgroundSource(candidate, "folder")
    if (path / BSDS_ARCHIVE).is_file():
        return BackgroundSource(path / BSDS_ARCHIVE, "archive")
    return None


def blend(
    digits: np.ndarray,
    backgrounds: Sequence[np.ndarray],
    rng: np.random.Generator,
    threshold: int = 0,
) -> np.ndarray:
    """``|patch - 255 * (digits > threshold)|`` with a random crop of a random background.

    ``digits``: ``(N, 28, 28)`` uint8; ``backgrounds``: ``(H, W, 3)`` uint8 arrays.
    Returns ``(N, 28, 28, 3)`` uint8. Draws, in this order, every sample's background index,
    then its crop row, then its crop column.
    """
    if digits.ndim != 3 or digits.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"digits must be (N, {SIZE}, {SIZE}), got {digits.shape}")
    n = len(digits)
    heights = np.array([b.shape[0] for b in backgrounds])
    widths = np.array([b.shape[1] for b in backgrounds])
    choice = rng.integers(len(backgrounds), size=n)
    top = rng.integers(0, heights[choice] - SIZE + 1)
    left = rng.integers(0, widths[choice] - SIZE + 1)
    stroke = (digits > threshold)[..., None]
    offsets = np.arange(SIZE)
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for k, background in enumerate(backgrounds):
        rows = np.flatnonzero(choice == k)
        if rows.size == 0:
            continue
        r = top[rows, None, None] + offsets[None, :, None]
        c = left[rows, None, None] + offsets[None, None, :]
        patch = background[r, c]
        out[rows] = np.where(stroke[rows], 255 - patch, patch)
    return out


def cache_key(
    split: str, seed: int, digits: np.ndarray, listing: Sequence[tuple[str, int]]
) -> dict[str, object]:
    """Everything that defines a generated split (its hash names the cache file)."""
    return {
        "recipe": RECIPE,
        "split": split,
        "seed": seed,
        "digits_sha256": hashlib.sha256(np.ascontiguousarray(digits).tobytes()).hexdigest(),
        "digits_shape": list(digits.shape),
        "backgrounds": [list(item) for item in listing],
    }


def generate_split(
    digits: np.ndarray,
    split: str,
    source: BackgroundSource,
    cache_dir: str | Path,
    seed: int = 0,
) -> np.ndarray:
    """MNIST-M for one MNIST split, read from the cache or generated and cached."""
    key = cache_key(split, seed, digits, source.listing())
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"mnist_m_{split}_{digest}.npz"
    if path.exists():
        cached = _read_cache(path, len(digits))
        if cached is not None:
            return cached
    log.info("generating MNIST-M %s (%d images) from %s", split, len(digits), source.path)
    rng = np.random.default_rng([seed, SPLIT_IDS[split]])
    images = blend(digits, source.load(), rng)
    _write_cache(path, images, key)
    return images


def _images_digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    """The cached images, or None when the file is unreadable, fails its content hash or has
    the wrong shape: then it is moved aside to ``<cache_dir>/.bad/`` with a warning naming it,
    and the split is generated again."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, digest = npz["images"], str(npz["sha256"])
        if images.shape != (n, SIZE, SIZE, 3) or images.dtype != np.uint8:
            raise ValueError(f"holds {images.dtype} images of shape {images.shape}")
        if _images_digest(images) != digest:
            raise ValueError("content hash mismatch")
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        bad = path.parent / ".bad" / path.name
        bad.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, bad)
        log.warning(
            "MNIST-M cache %s is bad (%s: %s): moved to %s; regenerating",
            path,
            type(err).__name__,
            err,
            bad,
        )
        return None
    return images


def _write_cache(path: Path, images: np.ndarray, key: dict[str, object]) -> None:
    """Write ``images``, their SHA-256 (checked on read) and the key (for people reading the
    cache) atomically."""
    key_text = np.array(json.dumps(key, sort_keys=True))

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, images=images, key=key_text, sha256=np.array(_images_digest(images)))

    atomic_write(path, save)
