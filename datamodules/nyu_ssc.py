"""NYU Depth v2 semantic scene completion (SSC): RGB teaches depth (paper Sec. IV-A-5; Table I,
Figs. 7d, 11b, 13b).

**Files.** The paper's released code reads NYU SSC as repackaged by DDRNet (Li et al., CVPR
2019; the data of SSCNet, Song et al. 2017, downloadable from the links in
github.com/waterljwant/SSC): one ``.npz`` per frame, in ``train/`` (795 frames) and ``test/``
(654) under ``root`` (default ``$NTDH_DATA/nyu_ssc``, ``$NTDH_DATA`` defaulting to ``./data``).
Each file holds:

=============  ====================  ==========================================================
key            shape                 meaning
=============  ====================  ==========================================================
``rgb``        ``(3, H, W)`` float   the colour image, already ImageNet-normalised (480 x 640)
``depth``      ``(1, H, W)`` float   the depth image in metres (``(H, W)`` also accepted)
``tsdf_hr``    ``(240, 144, 240)``   the flipped TSDF on the 2 cm grid (shape checked only)
``tsdf_lr``    ``(60, 36, 60)``      the same, downsampled by 4 to the target's grid
``target_lr``  ``(60, 36, 60)``      labels: 0 empty, 1-11 the SSC classes, 255 unknown
``position``   ``(H, W)`` int        per pixel, the C-order flat index of its voxel in the
                                     240 x 144 x 240 grid; 0 where the pixel has no voxel
=============  ====================  ==========================================================

Volumes are stored in the grid's ``(x, y, z) = (W, H, D)`` order; as the released loader
(``target_lr.T``) does, the batch holds them transposed to ``(D, H, W) = (60, 36, 60)``, the
layout of :class:`models.ssc.SSCNet`'s logits. ``grid`` (the low-resolution ``(x, y, z)`` size)
and ``scale`` (hr / lr, 4) are arguments so that tests can use small files.

**Batch.** ``xa`` (teacher, RGB) is ``(4, H, W)``: the 3 colour channels and, as a 4th
channel, the pixel's voxel index in the 240 x 144 x 240 grid as a float (exact, since
240 * 144 * 240 < 2^24), -1 where the pixel has no voxel. ``xb`` (student) is ``(2, H, W)``:
depth and the same index channel; packing the index into the input keeps the suite's
``model(batch["xb"]) -> ModelOutput`` call. ``student_input="tsdf"`` makes ``xb`` the TSDF
volume ``(1, D, H, W)`` at the target's resolution instead (no index channel needed). ``y`` is
``(D, H, W)`` long with 255 = ignore; ``position`` is the index as ``(H, W)`` long (-1: none),
for code that wants it without unpacking; ``index`` the frame's position in its split.
DDRNet writes 0 for "no voxel"; voxel 0 is the grid's far corner, which no NYU pixel reaches,
so 0 is read as "none" (``zero_is_none=False`` keeps it as voxel 0).

**valid** marks the voxels the SSC literature evaluates (SSCNet's protocol, as the released
``get_nonempty2(tsdf_lr, target_lr, 'TSDF')``): the voxels whose label is known (``!= 255``)
and that are *not* observed free space, i.e. ``tsdf_lr < 0.001`` (occluded or on the surface
band, the flipped TSDF being negative behind surfaces) or ``tsdf_lr == 1`` (the surface). The
release lets ``tsdf_lr == 1`` voxels labelled 255 back in; they are unlabelled, so no metric
counts them there either. Runs report the SSC literature's scores (``extra_metrics``: SC IoU,
SSC mIoU over classes 1-11) beside the 12-class mIoU of dense tasks.

**Classes.** 12: 0 empty, then ceiling, floor, wall, window, chair, bed, sofa, table, tvs,
furniture, objects (:data:`SSC_CLASSES`). SSC mIoU averages the 11 non-empty ones
(:mod:`ntdh_bench.ssc_metrics`).

**Splits.** ``train`` minus a seeded ``val_fraction`` of its files is the training split, that
fraction the validation split, ``test/`` the test split. ``max_files`` keeps the first files
(sorted by name) of each folder, for quick runs.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.base import IGNORE_INDEX, PairedDataModule
from ntdh_core import paths

SSC_CLASSES = (
    "empty",
    "ceiling",
    "floor",
    "wall",
    "window",
    "chair",
    "bed",
    "sofa",
    "table",
    "tvs",
    "furniture",
    "objects",
)
NPZ_KEYS = ("rgb", "depth", "tsdf_hr", "tsdf_lr", "target_lr", "position")
GRID = (60, 36, 60)  # the target's (x, y, z) = (W, H, D) grid
SCALE = 4  # the 240 x 144 x 240 grid (2 cm voxels) downsampled by 4 (8 cm)
TSDF_EMPTY = 0.001  # the flipped TSDF's value for observed free space and above
DATA_URL = "https://github.com/waterljwant/SSC (Data Preparation: the repackaged NYU .npz)"
STUDENT_INPUTS = ("depth", "tsdf")


def data_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$NTDH_DATA/nyu_ssc`` (``$NTDH_DATA`` defaulting to ``./data``)."""
    if root is not None:
        return Path(root)
    return paths.data_root() / "nyu_ssc"


def evaluated_voxels(tsdf_lr: np.ndarray, target_lr: np.ndarray) -> np.ndarray:
    """SSCNet's evaluation mask: labelled voxels that are occluded or on the surface."""
    return (target_lr != IGNORE_INDEX) & ((tsdf_lr < TSDF_EMPTY) | (tsdf_lr == 1))


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every array in an ``.npz``, read from the headers only (nothing decompressed
    beyond them), so that a folder of 33 MB files is checked in milliseconds."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, _ = np.lib.format.read_array_header_1_0(member)
                    else:
                        shape, _, _ = np.lib.format.read_array_header_2_0(member)
                shapes[name.removesuffix(".npy")] = tuple(shape)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from err
    return shapes


def check_npz(
    path: Path, grid: Sequence[int], scale: int, image_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """Check one frame's keys and shapes against the layout; return its image size ``(H, W)``."""
    shapes = npz_shapes(path)
    missing = [k for k in NPZ_KEYS if k not in shapes]
    if missing:
        raise ValueError(
            f"{path}: missing key(s) {missing}; a DDRNet-style NYU SSC file holds {list(NPZ_KEYS)}"
        )
    rgb = shapes["rgb"]
    if len(rgb) != 3 or rgb[0] != 3:
        raise ValueError(f"{path}: 'rgb' must be (3, H, W), got {rgb}")
    size = rgb[1:]
    hr = tuple(g * scale for g in grid)
    expected = {
        "depth": ((1, *size), size),
        "position": (size,),
        "tsdf_hr": (hr, (*hr, 1)),
        "tsdf_lr": (tuple(grid),),
        "target_lr": (tuple(grid),),
    }
    for key, allowed in expected.items():
        if shapes[key] not in allowed:
            raise ValueError(
                f"{path}: {key!r} has shape {shapes[key]}, expected "
                f"{' or '.join(str(a) for a in allowed)} (grid {tuple(grid)}, scale {scale})"
            )
    if image_size is not None and tuple(size) != tuple(image_size):
        raise ValueError(
            f"{path}: image size {size} differs from the first file's {tuple(image_size)}"
        )
    return size


def read_frame(
    path: Path, grid: Sequence[int], scale: int, zero_is_none: bool = True
) -> dict[str, np.ndarray]:
    """One frame as arrays in the batch's layout (volumes ``(D, H, W)``); checks the values."""
    with np.load(path) as npz:
        rgb = npz["rgb"].astype(np.float32)
        depth = npz["depth"].astype(np.float32).reshape(1, *rgb.shape[1:])
        tsdf = npz["tsdf_lr"].astype(np.float32)
        target = npz["target_lr"]
        position = npz["position"].astype(np.int64)
    n_voxels = math.prod(grid) * scale**3
    outside = (position < 0) | (position >= n_voxels)
    if outside.any():
        bad = position[outside]
        raise ValueError(
            f"{path}: 'position' holds {int(outside.sum())} index(es) outside the "
            f"{tuple(g * scale for g in grid)} grid [0, {n_voxels}), e.g. {int(bad[0])}"
        )
    labels = np.unique(target)
    unknown = labels[(labels >= len(SSC_CLASSES)) & (labels != IGNORE_INDEX)]
    if unknown.size:
        raise ValueError(
            f"{path}: 'target_lr' holds labels {unknown.tolist()}; expected 0..11 or 255"
        )
    if zero_is_none:
        position[position == 0] = -1
    return {
        "rgb": rgb,
        "depth": depth,
        "tsdf": tsdf.T.copy(),
        "y": target.T.astype(np.int64),
        "valid": evaluated_voxels(tsdf, target).T.copy(),
        "position": position,
    }


class NYUSSCDataset(Dataset):
    """Frames of one split, read from their ``.npz`` on access (workers open their own)."""

    def __init__(
        self,
        files: Sequence[Path],
        grid: Sequence[int],
        scale: int,
        teacher: str = "rgb",
        student_input: str = "depth",
        zero_is_none: bool = True,
    ) -> None:
        self.files = list(files)
        self.grid = tuple(grid)
        self.scale = scale
        self.teacher = teacher
        self.student_input = student_input
        self.zero_is_none = zero_is_none

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        frame = read_frame(self.files[i], self.grid, self.scale, self.zero_is_none)
        position = torch.from_numpy(frame["position"])
        channel = position.to(torch.float32).unsqueeze(0)
        rgb = torch.cat([torch.from_numpy(frame["rgb"]), channel])
        if self.student_input == "tsdf":
            depth = torch.from_numpy(frame["tsdf"]).unsqueeze(0)
        else:
            depth = torch.cat([torch.from_numpy(frame["depth"]), channel])
        xa, xb = (rgb, depth) if self.teacher == "rgb" else (depth, rgb)
        return {
            "xa": xa,
            "xb": xb,
            "y": torch.from_numpy(frame["y"]),
            "valid": torch.from_numpy(frame["valid"]),
            "position": position,
            "index": torch.tensor(i),
        }


class NYUSSCDataModule(PairedDataModule):
    """NYU SSC (DDRNet's ``.npz``), RGB (teacher by default) and depth; see the module doc."""

    task: ClassVar[str] = "dense"
    extra_metrics: ClassVar[tuple[str, ...]] = ("ssc",)  # SC IoU, SSC mIoU (ntdh_bench)
    num_classes = len(SSC_CLASSES)
    class_names: ClassVar[tuple[str, ...]] = SSC_CLASSES
    modalities: ClassVar[tuple[str, str]] = ("rgb", "depth")

    def __init__(
        self,
        root: str | None = None,
        teacher: str = "rgb",
        student_input: str = "depth",
        val_fraction: float = 0.1,
        max_files: int | None = None,
        grid: Sequence[int] = GRID,
        scale: int = SCALE,
        zero_is_none: bool = True,
        batch_size: int = 4,
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
        if teacher not in self.modalities:
            raise ValueError(f"teacher must be one of {self.modalities}, got {teacher!r}")
        if student_input not in STUDENT_INPUTS:
            raise ValueError(
                f"student_input must be one of {STUDENT_INPUTS}, got {student_input!r}"
            )
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if len(grid) != 3 or min(grid) < 1 or scale < 1:
            raise ValueError(f"grid must be 3 positive sizes and scale >= 1: {grid}, {scale}")
        self.root = data_root(root)
        self.teacher = teacher
        self.student_input = student_input
        self.val_fraction = val_fraction
        self.max_files = max_files
        self.grid = tuple(int(g) for g in grid)
        self.scale = int(scale)
        self.zero_is_none = zero_is_none
        self._files: dict[str, list[Path]] | None = None
        self.image_size: tuple[int, int] | None = None
        self.files()  # fail now, not inside a Trainer: names and headers only

    @classmethod
    def is_available(cls, root: str | None = None) -> bool:
        base = data_root(root)
        return all(any((base / split).glob("*.npz")) for split in ("train", "test"))

    def files(self) -> dict[str, list[Path]]:
        """The ``.npz`` of each split, checked (keys and shapes, from the headers)."""
        if self._files is not None:
            return self._files
        folders = {}
        for split in ("train", "test"):
            found = sorted((self.root / split).glob("*.npz"))[: self.max_files]
            if not found:
                raise FileNotFoundError(
                    f"NYU SSC not found: no .npz files in {self.root / split}. Expected "
                    f"{self.root}/train/*.npz and {self.root}/test/*.npz, DDRNet's repackaged "
                    f"NYU ({DATA_URL}). The root is $NTDH_DATA/nyu_ssc (default ./data/nyu_ssc) "
                    f"or root=..."
                )
            folders[split] = found
        for path in folders["train"] + folders["test"]:
            self.image_size = check_npz(path, self.grid, self.scale, self.image_size)
        n_val = round(self.val_fraction * len(folders["train"]))
        order = torch.randperm(
            len(folders["train"]), generator=torch.Generator().manual_seed(self.seed)
        )
        val = set(order[:n_val].tolist())
        self._files = {
            "train": [p for i, p in enumerate(folders["train"]) if i not in val],
            "val": [p for i, p in enumerate(folders["train"]) if i in val],
            "test": folders["test"],
        }
        return self._files

    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``xa`` and ``xb`` shapes from the file headers (nothing decompressed)."""
        self.files()
        h, w = self.image_size
        volume = (1, self.grid[2], self.grid[1], self.grid[0])
        shapes = {"rgb": (4, h, w), "depth": volume if self.student_input == "tsdf" else (2, h, w)}
        student = next(m for m in self.modalities if m != self.teacher)
        return shapes[self.teacher], shapes[student]

    def build_datasets(self) -> dict[str, Dataset]:
        common: dict[str, Any] = dict(
            grid=self.grid,
            scale=self.scale,
            teacher=self.teacher,
            student_input=self.student_input,
            zero_is_none=self.zero_is_none,
        )
        return {split: NYUSSCDataset(files, **common) for split, files in self.files().items()}
