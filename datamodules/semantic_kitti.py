"""SemanticKITTI: the camera image and the projected lidar scan (paper Sec. IV-A-4; Table I, Figs.
4c, 7c, 11a, 12; Table IV).

As in PMF (paper ref. [42]), which the paper follows, each scan is projected into the image of
camera 2 (:mod:`datamodules.lidar_projection`), so that both modalities are ``H x W`` maps and
one network class serves both (Assumption 1). ``xa`` is the camera image and ``xb`` the point
image by default (the camera teaches, as in PMF and 2DPASS); ``teacher="lidar"`` swaps them.

**Files** (:mod:`datamodules.semantic_kitti_files`): ``kitti_dir`` (default
``<root>/semantic_kitti/dataset``, ``root`` defaulting to ``$NTDH_DATA``, else ``./data``)
holds ``sequences/NN/{velodyne,labels,image_2}`` and ``calib.txt`` as published;
``config_path`` (default ``semantic-kitti.yaml`` beside ``kitti_dir``) the label definitions.
``class_names`` and ``class_weights`` (inverse content frequency, mean 1) come from it.

**Sample** (one frame; ``Hc x Wc`` the crop padded up to multiples of ``stride``):

* ``xa`` ``(3, Hc, Wc)`` float32: RGB in [0, 1] standardised with the ImageNet statistics
  (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225: torchvision's, the statistics of the
  ResNet encoder's usual pretraining);
* ``xb`` ``(5, Hc, Wc)`` float32: range, x, y, z, remission of the nearest point at each pixel,
  standardised with PMF's statistics, zero where no point;
* ``y`` ``(Hc, Wc)`` int64: that point's class (0..18), 255 where no point or unlabelled; with
  ``dense_label_dir`` the per-pixel label of ``<dense_label_dir>/NN/FFFFFF.png`` instead
  (one-channel 8-bit PNG of the image's size in learning ids: 0 unlabelled, 1..19 the
  classes, 255 ignored; the dense labels of the paper's ref. [48]). ``valid`` stays the
  lidar's: where the suite's module masks ``y`` outside ``valid`` (the dense-task contract),
  dense labels count only at point pixels;
* ``valid`` ``(Hc, Wc)`` bool: a point landed there; ``index``: the frame's position in its split.
* with ``return_points=True`` also, for point-wise predictions and metrics: ``points_uv``
  ``(max_points, 2)`` int64 ``(col, row)`` in the sample's frame of every point of the scan
  that falls inside the crop (occluded ones too; ``-1`` padding), ``points_label``
  ``(max_points,)`` (255 padding) and ``num_points``. Off by default: it adds 3.6 MB per
  sample at the default ``max_points`` (150,000; a HDL-64 scan has about 120,000 points).

**Crops.** Both modalities and the labels are cut by one window. Training: a random
``crop_size`` window (default 256 x 1024, PMF's released training crop) and a horizontal flip
with probability 1/2; the flip negates the point image's lateral ``y`` channel so that the
mirrored scene stays geometrically consistent (PMF flips the pixels only). Evaluation: the
centre ``eval_crop_size`` window (default 370 x 1226: the whole image of sequences 04-10, all
but a few border pixels of sequences 00-03's 1241 x 376). Where an image is smaller than the
window it is taken whole. Then the window is padded at the bottom and right up to a multiple of
``stride`` (default 32; PMF pads to multiples of 16): ``xa``, ``xb`` with 0, ``y`` with 255,
``valid`` with False; 256 x 1024 stays, 370 x 1226 becomes 384 x 1248. PMF's random rotation
and colour jitter are not applied.

**Splits** by sequence: training 00-07 and 09-10, validation 08 (the SemanticKITTI split);
``test_sequences`` defaults to the validation's, since the test sequences 11-21 have no
public labels. ``scan_stride`` keeps every k-th frame and ``max_scans`` the first N of those,
for quick runs. The data does not fit in memory: frames are read by ``num_workers``
DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.base import PairedDataModule
from datamodules.lidar_projection import (
    POINT_CHANNELS,
    ScanProjection,
    label_image,
    normalize_point_image,
    point_image,
    project_scan,
)
from datamodules.semantic_kitti_files import (
    IGNORE_INDEX,
    LabelConfig,
    ScanFiles,
    check_frames,
    layout_message,
    lidar_to_image,
    list_scans,
    load_label_config,
    read_dense_label,
    read_image,
    read_labels,
    read_scan,
    sequence_dir,
)
from ntdh_core import paths

TRAIN_SEQUENCES = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10)
VAL_SEQUENCES = (8,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LATERAL_CHANNEL = POINT_CHANNELS.index("y")


def padded(size: int, stride: int) -> int:
    """``size`` rounded up to a multiple of ``stride``."""
    return math.ceil(size / stride) * stride


def _pad(x: Tensor, height: int, width: int, value: float) -> Tensor:
    out = x.new_full((*x.shape[:-2], height, width), value)
    out[..., : x.shape[-2], : x.shape[-1]] = x
    return out


class SemanticKittiScans(Dataset):
    """The frames of one split, read, projected and cropped on access (module doc)."""

    def __init__(
        self,
        frames: Sequence[ScanFiles],
        matrices: dict[int, np.ndarray],
        labels: LabelConfig,
        crop_size: tuple[int, int],
        train: bool,
        stride: int = 32,
        teacher: str = "camera",
        return_points: bool = False,
        max_points: int = 150_000,
    ) -> None:
        self.frames = list(frames)
        self.matrices = matrices
        self.labels = labels
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.train = train
        self.out_size = (padded(self.crop_size[0], stride), padded(self.crop_size[1], stride))
        self.teacher = teacher
        self.return_points = return_points
        self.max_points = max_points
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.frames)

    def window(self, height: int, width: int) -> tuple[int, int, int, int, bool]:
        """``(top, left, h, w, flip)``: random with a flip in training, centred otherwise."""
        h, w = min(self.crop_size[0], height), min(self.crop_size[1], width)
        if not self.train:
            return (height - h) // 2, (width - w) // 2, h, w, False
        top = int(torch.randint(height - h + 1, ()))
        left = int(torch.randint(width - w + 1, ()))
        return top, left, h, w, bool(torch.rand(()) < 0.5)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        frame = self.frames[index]
        points = read_scan(frame.scan)
        classes = self.labels.map_labels(read_labels(frame.label, len(points)))
        image = read_image(frame.image)
        height, width = image.shape[:2]
        projection = project_scan(points, self.matrices[frame.sequence], height, width)
        if frame.dense_label is None:
            y = label_image(classes, projection, IGNORE_INDEX)
        else:
            y = torch.from_numpy(read_dense_label(frame.dense_label, (height, width)))
        maps = {
            "camera": torch.from_numpy(image).permute(2, 0, 1),
            "lidar": point_image(points, projection),
            "y": y,
            "valid": projection.valid,
        }
        top, left, h, w, flip = self.window(height, width)
        maps = {k: v[..., top : top + h, left : left + w] for k, v in maps.items()}
        if flip:
            maps = {k: v.flip(-1) for k, v in maps.items()}
            maps["lidar"][LATERAL_CHANNEL].neg_()
        camera = (maps["camera"].float() / 255 - self._mean) / self._std
        lidar = normalize_point_image(maps["lidar"], maps["valid"])
        out_h, out_w = self.out_size
        x = {"camera": _pad(camera, out_h, out_w, 0.0), "lidar": _pad(lidar, out_h, out_w, 0.0)}
        student = "lidar" if self.teacher == "camera" else "camera"
        item = {
            "xa": x[self.teacher],
            "xb": x[student],
            "y": _pad(maps["y"], out_h, out_w, IGNORE_INDEX),
            "valid": _pad(maps["valid"], out_h, out_w, False),
            "index": torch.tensor(index),
        }
        if self.return_points:
            item.update(self._points(projection, classes, (top, left, h, w, flip), frame))
        return item

    def _points(
        self,
        projection: ScanProjection,
        classes: np.ndarray,
        window: tuple[int, int, int, int, bool],
        frame: ScanFiles,
    ) -> dict[str, Tensor]:
        """Per-point pixels in the sample's frame, padded to ``max_points`` (module doc)."""
        top, left, h, w, flip = window
        rows, cols = projection.rows - top, projection.cols - left
        keep = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        rows, cols = rows[keep], cols[keep]
        if flip:
            cols = w - 1 - cols
        n = len(rows)
        if n > self.max_points:
            raise ValueError(
                f"{frame.scan}: {n} points fall inside the crop, more than max_points="
                f"{self.max_points}; raise max_points"
            )
        uv = torch.full((self.max_points, 2), -1, dtype=torch.long)
        uv[:n, 0], uv[:n, 1] = cols, rows
        label = torch.full((self.max_points,), IGNORE_INDEX, dtype=torch.long)
        label[:n] = torch.from_numpy(classes)[projection.indices[keep]]
        return {"points_uv": uv, "points_label": label, "num_points": torch.tensor(n)}


class SemanticKittiDataModule(PairedDataModule):
    """SemanticKITTI, camera image (teacher by default) and projected scan; see the module doc."""

    task: ClassVar[str] = "dense"
    modalities: ClassVar[tuple[str, str]] = ("camera", "lidar")

    def __init__(
        self,
        teacher: str = "camera",
        root: str | None = None,
        kitti_dir: str | None = None,
        config_path: str | None = None,
        train_sequences: Sequence[int] = TRAIN_SEQUENCES,
        val_sequences: Sequence[int] = VAL_SEQUENCES,
        test_sequences: Sequence[int] | None = None,
        crop_size: Sequence[int] = (256, 1024),
        eval_crop_size: Sequence[int] = (370, 1226),
        stride: int = 32,
        scan_stride: int = 1,
        max_scans: int | None = None,
        dense_label_dir: str | None = None,
        return_points: bool = False,
        max_points: int = 150_000,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size or batch_size,
            seed=seed,
            num_workers=num_workers,
        )
        if teacher not in self.modalities:
            raise ValueError(f"teacher must be one of {self.modalities}, got {teacher!r}")
        for name, size in (("crop_size", crop_size), ("eval_crop_size", eval_crop_size)):
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"{name} must be (height, width) >= 1, got {list(size)}")
        if stride < 1 or scan_stride < 1 or (max_scans is not None and max_scans < 1):
            raise ValueError(
                f"stride, scan_stride and max_scans must be >= 1, got {stride}, {scan_stride}, "
                f"{max_scans}"
            )
        self.teacher = teacher
        self.student = next(m for m in self.modalities if m != teacher)
        self.kitti_dir = Path(kitti_dir) if kitti_dir is not None else default_kitti_dir(root)
        self.config_path = (
            Path(config_path) if config_path is not None else default_config_path(self.kitti_dir)
        )
        self.sequences = {
            "train": tuple(int(s) for s in train_sequences),
            "val": tuple(int(s) for s in val_sequences),
            "test": tuple(int(s) for s in (test_sequences or val_sequences)),
        }
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.eval_crop_size = (int(eval_crop_size[0]), int(eval_crop_size[1]))
        self.stride = stride
        self.scan_stride = scan_stride
        self.max_scans = max_scans
        self.dense_label_dir = Path(dense_label_dir) if dense_label_dir is not None else None
        self.return_points = return_points
        self.max_points = max_points
        if not (self.kitti_dir / "sequences").is_dir():
            raise FileNotFoundError(
                layout_message(
                    self.kitti_dir,
                    self.config_path,
                    f"{self.kitti_dir / 'sequences'} does not exist",
                )
            )
        if not self.config_path.is_file():
            raise FileNotFoundError(
                layout_message(
                    self.kitti_dir, self.config_path, f"{self.config_path} does not exist"
                )
            )
        self.label_config = load_label_config(self.config_path)
        self.num_classes = self.label_config.num_classes
        self.class_names = self.label_config.class_names
        self.class_weights = torch.from_numpy(self.label_config.class_weights)

    @classmethod
    def is_available(cls, root: str | None = None) -> bool:
        """Whether ``<root>/semantic_kitti`` holds the yaml and a sequence with scans and images."""
        kitti_dir = default_kitti_dir(root)
        if not default_config_path(kitti_dir).is_file():
            return False
        sequences = kitti_dir / "sequences"
        return sequences.is_dir() and any(
            any((s / "velodyne").glob("*.bin")) and any((s / "image_2").glob("*.png"))
            for s in sequences.iterdir()
            if s.is_dir()
        )

    def frames(self, split: str) -> list[ScanFiles]:
        """The frames of ``split`` after ``scan_stride`` and ``max_scans`` (names only)."""
        frames = list_scans(
            self.kitti_dir, self.sequences[split], self.config_path, self.dense_label_dir
        )
        return frames[:: self.scan_stride][: self.max_scans]

    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of one training ``xa`` and ``xb`` (from the crop size; nothing is read)."""
        size = (padded(self.crop_size[0], self.stride), padded(self.crop_size[1], self.stride))
        shapes = {"camera": (3, *size), "lidar": (len(POINT_CHANNELS), *size)}
        return shapes[self.teacher], shapes[self.student]

    def build_datasets(self) -> dict[str, Dataset]:
        out = {}
        for split in ("train", "val", "test"):
            frames = self.frames(split)
            check_frames(frames)
            matrices = {
                seq: lidar_to_image(sequence_dir(self.kitti_dir, seq) / "calib.txt")
                for seq in self.sequences[split]
            }
            train = split == "train"
            out[split] = SemanticKittiScans(
                frames,
                matrices,
                self.label_config,
                self.crop_size if train else self.eval_crop_size,
                train=train,
                stride=self.stride,
                teacher=self.teacher,
                return_points=self.return_points,
                max_points=self.max_points,
            )
        return out


def default_kitti_dir(root: str | Path | None = None) -> Path:
    """``<data root>/semantic_kitti/dataset``."""
    return (Path(root) if root is not None else paths.data_root()) / "semantic_kitti" / "dataset"


def default_config_path(kitti_dir: Path) -> Path:
    """``semantic-kitti.yaml`` beside the dataset folder."""
    return Path(kitti_dir).parent / "semantic-kitti.yaml"
