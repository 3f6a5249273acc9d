"""NYU Depth v2, labelled release: 2D semantic segmentation, RGB teaches depth.

The paper's NYU experiments are semantic scene completion (:mod:`datamodules.nyu_ssc`); this is
the 2D counterpart on the same frames, for experiments that want per-pixel outputs.

**Files** under ``root`` (default ``$NTDH_DATA/nyu_depth_v2``, ``$NTDH_DATA`` defaulting to
``./data``), each also found in ``root/meta/``:

* ``nyu_depth_v2_labeled.mat`` (2.8 GB, http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/
  nyu_depth_v2_labeled.mat): MATLAB v7.3, i.e. HDF5. h5py sees MATLAB's column-major arrays
  with the axes reversed: ``images`` ``(N, 3, W, H)`` uint8, ``depths`` / ``rawDepths``
  ``(N, W, H)`` float metres, ``labels`` ``(N, W, H)`` over the 894 classes (0 unlabelled).
  It is read lazily, one frame per item, and opened once per DataLoader worker.
* ``splits.mat`` (the official split: ``trainNdxs`` 795, ``testNdxs`` 654, 1-based) and
  ``classMapping40.mat`` (``mapClass``: 894 -> 40, Gupta et al. 2013), MATLAB v5 files from
  github.com/ankurhanda/nyuv2-meta-data, read with scipy.

**Labels.** ``num_classes=40``: the 894 classes through ``mapClass``; ``13``: then through
:data:`NYU40_TO_13` (Couprie et al. 2013's 13 classes, the ``classMapping13.mat`` of
github.com/ankurhanda/SceneNetv1.0). Class ``k`` (1-based) becomes ``k - 1``; unlabelled
pixels (0) become 255.

**Inputs.** ``xa`` is RGB in [0, 1] standardised with ImageNet's statistics
(:data:`RGB_MEAN`, :data:`RGB_STD`), ``xb`` depth in metres standardised with ``depth_stats``:
``"train"`` (default) computes its mean and standard deviation over the measured pixels of the
training split once, in float64 over chunks; a ``(mean, std)`` pair fixes them. ``teacher``
swaps the two (default: RGB teaches). ``raw_depth=True`` reads ``rawDepths`` (the Kinect's
measurements, 0 where missing) instead of ``depths`` (the toolbox's in-painted maps, which
have no holes). ``valid`` is where the depth was measured (> 0).

**Size.** ``resize=(H, W)`` resizes every frame (480 x 640 in the release): RGB bilinearly
with antialiasing, depth and labels by nearest neighbour, so that a resized pixel keeps one
measured depth and one label (quick runs on CPU, e.g. ``(240, 320)``); ``None`` keeps the size.

**Splits.** ``train`` is ``trainNdxs`` minus a seeded ``val_fraction``, which is ``val``;
``test`` is ``testNdxs``. ``max_images`` keeps the first indices of each, for quick runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import scipy.io
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.base import IGNORE_INDEX, PairedDataModule
from ntdh_core import paths

MAT_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
MAPPING_FILE = "classMapping40.mat"
MAT_URL = "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat"
META_URL = "https://github.com/ankurhanda/nyuv2-meta-data"
RGB_MEAN = (0.485, 0.456, 0.406)  # ImageNet's, as for ImageNet-pretrained encoders
RGB_STD = (0.229, 0.224, 0.225)
N_RAW_CLASSES = 894

# 40 -> 13 (index 0: unlabelled), the classMapping13.mat of ankurhanda/SceneNetv1.0 (Couprie et
# al., "Indoor semantic segmentation using depth information", ICLR 2013). The 13 classes, 1-based:
# bed, books, ceiling, chair, floor, furniture, objects, picture, sofa, table, tv, wall, window.
NYU40_TO_13 = (
    0, 12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5,
    7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7,
)  # fmt: skip
CLASSES_13 = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa",
    "table", "tv", "wall", "window",
)  # fmt: skip


def data_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$NTDH_DATA/nyu_depth_v2`` (``$NTDH_DATA`` defaulting to ``./data``)."""
    if root is not None:
        return Path(root)
    return paths.data_root() / "nyu_depth_v2"


def find_file(root: Path, name: str) -> Path:
    """``root/name`` or ``root/meta/name``; a clear error naming the layout otherwise."""
    for candidate in (root / name, root / "meta" / name):
        if candidate.is_file():
            return candidate
    source = MAT_URL if name == MAT_FILE else f"{META_URL} ({name})"
    raise FileNotFoundError(
        f"NYU Depth v2: {name} not found in {root} or {root / 'meta'}. Expected {root}/{MAT_FILE}"
        f" (the labelled release, MATLAB v7.3) and {SPLITS_FILE}, {MAPPING_FILE} there or in "
        f"meta/; get it from {source}. The root is $NTDH_DATA/nyu_depth_v2 (default "
        f"./data/nyu_depth_v2) or root=..."
    )


def read_splits(path: Path) -> dict[str, np.ndarray]:
    """``{"train", "test"}``: 0-based image indices from the official 1-based ``splits.mat``."""
    mat = _loadmat(path, ("trainNdxs", "testNdxs"))
    return {s: mat[f"{s}Ndxs"].astype(np.int64).ravel() - 1 for s in ("train", "test")}


def label_lookup(mapping_path: Path, num_classes: int) -> np.ndarray:
    """A table ``raw label (0..894) -> training label`` (0-based class, 255 unlabelled)."""
    map_class = _loadmat(mapping_path, ("mapClass",))["mapClass"].astype(np.int64).ravel()
    if map_class.size != N_RAW_CLASSES or map_class.min() < 1 or map_class.max() > 40:
        raise ValueError(
            f"{mapping_path}: 'mapClass' must map the {N_RAW_CLASSES} classes to 1..40, got "
            f"{map_class.size} entries in [{map_class.min()}, {map_class.max()}]"
        )
    to40 = np.concatenate([[0], map_class])
    table = to40 if num_classes == 40 else np.asarray(NYU40_TO_13)[to40]
    return np.where(table == 0, IGNORE_INDEX, table - 1).astype(np.int64)


def _loadmat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, OSError, NotImplementedError) as err:
        raise ValueError(f"{path}: not a readable MATLAB v5 .mat file ({err})") from err
    missing = [k for k in keys if k not in mat]
    if missing:
        raise ValueError(f"{path}: missing variable(s) {missing}; expected {list(keys)}")
    return mat


class NYUDepthDataset(Dataset):
    """Frames ``indices`` of the labelled ``.mat``, read one by one (HDF5 opened per worker)."""

    def __init__(
        self,
        mat_path: Path,
        indices: Sequence[int],
        lookup: np.ndarray,
        depth_key: str,
        depth_stats: tuple[float, float],
        teacher: str = "rgb",
        resize: tuple[int, int] | None = None,
    ) -> None:
        self.mat_path = mat_path
        self.resize = resize
        self.indices = [int(i) for i in indices]
        self.lookup = torch.from_numpy(lookup)
        self.depth_key = depth_key
        self.depth_stats = depth_stats
        self.teacher = teacher
        self._file: h5py.File | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}  # each worker opens its own handle

    def __len__(self) -> int:
        return len(self.indices)

    def _h5(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.mat_path, "r")
        return self._file

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        f, n = self._h5(), self.indices[i]
        rgb = torch.from_numpy(f["images"][n].transpose(0, 2, 1).copy()).float().div_(255)
        depth = torch.from_numpy(f[self.depth_key][n].T.astype(np.float32))
        raw = torch.from_numpy(f["labels"][n].T.astype(np.int64))
        if raw.max() > N_RAW_CLASSES:
            raise ValueError(
                f"{self.mat_path}: labels of image {n + 1} (1-based) reach {int(raw.max())}; "
                f"the labelled release has {N_RAW_CLASSES} classes"
            )
        if self.resize is not None:
            rgb, depth, raw = _resized(rgb, depth, raw, self.resize)
        mean, std = torch.tensor(RGB_MEAN).view(3, 1, 1), torch.tensor(RGB_STD).view(3, 1, 1)
        rgb = (rgb - mean) / std
        valid = depth > 0
        d_mean, d_std = self.depth_stats
        depth = ((depth - d_mean) / d_std).masked_fill(~valid, 0.0).unsqueeze(0)
        xa, xb = (rgb, depth) if self.teacher == "rgb" else (depth, rgb)
        return {
            "xa": xa,
            "xb": xb,
            "y": self.lookup[raw],
            "valid": valid,
            "index": torch.tensor(i),
        }


def _resized(
    rgb: Tensor, depth: Tensor, labels: Tensor, size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """RGB bilinear (antialiased); depth and labels nearest, keeping one measurement and one
    label per pixel (interpolating would blend depths across edges and holes)."""
    rgb = F.interpolate(rgb[None], size, mode="bilinear", antialias=True, align_corners=False)
    depth = F.interpolate(depth[None, None], size, mode="nearest")
    labels = F.interpolate(labels[None, None].float(), size, mode="nearest").long()
    return rgb[0], depth[0, 0], labels[0, 0]


class NYUDepthDataModule(PairedDataModule):
    """NYU Depth v2 labelled frames, 40 or 13 classes, RGB and depth; see the module doc."""

    task: ClassVar[str] = "dense"
    modalities: ClassVar[tuple[str, str]] = ("rgb", "depth")

    def __init__(
        self,
        root: str | None = None,
        num_classes: int = 40,
        teacher: str = "rgb",
        raw_depth: bool = False,
        depth_stats: str | Sequence[float] = "train",
        val_fraction: float = 0.1,
        max_images: int | None = None,
        resize: Sequence[int] | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size or batch_size,
            seed=seed,
            num_workers=num_workers,
        )
        if num_classes not in (40, 13):
            raise ValueError(f"num_classes must be 40 or 13, got {num_classes}")
        if teacher not in self.modalities:
            raise ValueError(f"teacher must be one of {self.modalities}, got {teacher!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if resize is not None and (len(resize) != 2 or min(resize) < 1):
            raise ValueError(f"resize must be (H, W) of positive sizes or None, got {resize!r}")
        if depth_stats != "train" and (isinstance(depth_stats, str) or len(depth_stats) != 2):
            raise ValueError(f"depth_stats must be 'train' or (mean, std), got {depth_stats!r}")
        self.root = data_root(root)
        self.num_classes = num_classes
        self.teacher = teacher
        self.depth_key = "rawDepths" if raw_depth else "depths"
        self.val_fraction = val_fraction
        self.max_images = max_images
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.mat_path = find_file(self.root, MAT_FILE)
        self.splits_path = find_file(self.root, SPLITS_FILE)
        self.mapping_path = find_file(self.root, MAPPING_FILE)
        self.depth_stats = None if depth_stats == "train" else tuple(map(float, depth_stats))
        self._indices: dict[str, np.ndarray] | None = None
        self.image_size = self._check_mat()
        self.indices()  # fail now, not inside a Trainer: a split index past the image count

    @classmethod
    def is_available(cls, root: str | None = None) -> bool:
        try:
            for name in (MAT_FILE, SPLITS_FILE, MAPPING_FILE):
                find_file(data_root(root), name)
        except FileNotFoundError:
            return False
        return True

    def _check_mat(self) -> tuple[int, int]:
        """Datasets, their shapes and the image count; returns ``(H, W)``."""
        try:
            with h5py.File(self.mat_path, "r") as f:
                wanted = ("images", self.depth_key, "labels")
                missing = [k for k in wanted if k not in f]
                if missing:
                    raise ValueError(
                        f"{self.mat_path}: missing dataset(s) {missing} (has {sorted(f)}); the "
                        f"labelled release holds images, depths, rawDepths and labels"
                    )
                shapes = {k: f[k].shape for k in wanted}
        except OSError as err:
            raise ValueError(f"{self.mat_path}: not an HDF5 (MATLAB v7.3) file ({err})") from err
        n, _, w, h = shapes["images"] if len(shapes["images"]) == 4 else (0, 0, 0, 0)
        if shapes["images"] != (n, 3, w, h) or any(
            shapes[k] != (n, w, h) for k in (self.depth_key, "labels")
        ):
            raise ValueError(
                f"{self.mat_path}: expected images (N, 3, W, H) and {self.depth_key}, labels "
                f"(N, W, H) as h5py reads MATLAB's arrays; got {shapes}"
            )
        self.n_images = n
        return h, w

    def indices(self) -> dict[str, np.ndarray]:
        """0-based frame indices of each split, checked against the ``.mat``'s image count."""
        if self._indices is None:
            official = read_splits(self.splits_path)
            for split, idx in official.items():
                bad = idx[(idx < 0) | (idx >= self.n_images)]
                if bad.size:
                    raise ValueError(
                        f"{self.splits_path}: {split}Ndxs holds {bad.size} index(es) outside the "
                        f"{self.n_images} images of {self.mat_path}, e.g. {int(bad[0]) + 1} "
                        f"(1-based)"
                    )
            train = official["train"][: self.max_images]
            gen = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(len(train), generator=gen).numpy()
            n_val = round(self.val_fraction * len(train))
            self._indices = {
                "train": np.sort(train[order[n_val:]]),
                "val": np.sort(train[order[:n_val]]),
                "test": official["test"][: self.max_images],
            }
        return self._indices

    def training_depth_stats(self, chunk: int = 16) -> tuple[float, float]:
        """Mean and standard deviation (metres) of the measured training pixels, in float64."""
        total = squares = count = 0.0
        with h5py.File(self.mat_path, "r") as f:
            data = f[self.depth_key]
            idx = self.indices()["train"]
            for start in range(0, len(idx), chunk):
                part = data[np.sort(idx[start : start + chunk])].astype(np.float64)
                part = part[part > 0]
                total, squares, count = (
                    total + part.sum(),
                    squares + np.square(part).sum(),
                    count + part.size,
                )
        if count == 0:
            raise ValueError(f"{self.mat_path}: no measured depth in the training split")
        mean = total / count
        return float(mean), float(max(np.sqrt(max(squares / count - mean**2, 0.0)), 1e-6))

    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        size = self.resize or self.image_size
        shapes = {"rgb": (3, *size), "depth": (1, *size)}
        student = next(m for m in self.modalities if m != self.teacher)
        return shapes[self.teacher], shapes[student]

    def build_datasets(self) -> dict[str, Dataset]:
        if self.depth_stats is None:
            self.depth_stats = self.training_depth_stats()
        lookup = label_lookup(self.mapping_path, self.num_classes)
        return {
            split: NYUDepthDataset(
                self.mat_path,
                idx,
                lookup,
                self.depth_key,
                self.depth_stats,
                self.teacher,
                self.resize,
            )
            for split, idx in self.indices().items()
        }
