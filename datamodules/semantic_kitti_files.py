"""SemanticKITTI's files: the published layout, readers that check what they read, the labels.

**Layout** (KITTI odometry + SemanticKITTI, as published)::

    <kitti_dir>/sequences/NN/velodyne/FFFFFF.bin    float32 x, y, z, remission per point
    <kitti_dir>/sequences/NN/labels/FFFFFF.label    uint32 per point: semantic id in the lower
                                                    16 bits, instance id in the upper 16
    <kitti_dir>/sequences/NN/image_2/FFFFFF.png     left colour camera (camera 2)
    <kitti_dir>/sequences/NN/calib.txt              3x4 matrices P0..P3 and Tr (velodyne->cam0)
    <kitti_dir>/sequences/NN/poses.txt              (not read here)
    <kitti_dir>/../semantic-kitti.yaml              the label definitions (semantic-kitti-api)

Every reader raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a malformed
one, with the path in the message: a scan is never half-read and a label never guessed.

**Labels.** ``learning_map`` sends the 34 raw semantic ids to 0..19, where 0 is "unlabelled"
(also outliers, other-structure, other-object). Here class ``c`` of the network is the
learning id ``c + 1`` (19 classes) and learning id 0 becomes the ignore index 255. The lookup
table covers all 2**16 lower-16-bit ids, so an id absent from ``learning_map`` is ignored too,
never mapped to a neighbour's class.

**Class weights** from the yaml's ``content`` (each raw id's share of all points): the share
``f_c`` of class ``c`` sums its raw ids' shares, and ``w_c = 1 / (f_c + eps)`` with
``eps = 0.001`` (RangeNet++'s inverse-frequency weights), rescaled to mean 1 over the 19
classes. Rare classes (motorcyclist, ``f = 4e-5``) get about 200 times the weight of road.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from datamodules.base import IGNORE_INDEX

SEMANTIC_KITTI_URL = "http://www.semantic-kitti.org/"
KITTI_ODOMETRY_URL = "https://www.cvlibs.net/datasets/kitti/eval_odometry.php"
SEMANTIC_KITTI_API_URL = "https://github.com/PRBonn/semantic-kitti-api"
WEIGHT_EPS = 0.001
_FRAME = re.compile(r"\d{6}")


def layout_message(kitti_dir: Path, yaml_path: Path, problem: str) -> str:
    """What is missing, the expected layout, and where to get the data."""
    return (
        f"SemanticKITTI not found: {problem}. Expected {kitti_dir}/sequences/NN/ holding "
        f"velodyne/FFFFFF.bin, labels/FFFFFF.label, image_2/FFFFFF.png and calib.txt, and the "
        f"label definitions at {yaml_path}. Get the velodyne scans, the calibration and the "
        f"colour images of the KITTI odometry benchmark ({KITTI_ODOMETRY_URL}: "
        f"data_odometry_velodyne, data_odometry_calib, data_odometry_color), the labels from "
        f"{SEMANTIC_KITTI_URL} (data_odometry_labels), and semantic-kitti.yaml from "
        f"{SEMANTIC_KITTI_API_URL} (config/). The data root is $NTDH_DATA (default ./data), "
        f"or pass root=..., kitti_dir=... or config_path=..."
    )


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")


# --- scans and labels ----------------------------------------------------------------------
def read_scan(path: str | Path) -> np.ndarray:
    """A velodyne scan as ``(N, 4)`` float32: x, y, z (metres, lidar frame), remission."""
    path = Path(path)
    _require(path, "velodyne scan")
    size = path.stat().st_size
    if size % 16:
        raise ValueError(
            f"{path}: {size} bytes is not a multiple of 16 (four float32 per point: x, y, z, "
            f"remission); the file is truncated or not a KITTI velodyne scan"
        )
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def read_labels(path: str | Path, num_points: int) -> np.ndarray:
    """A scan's raw ``uint32`` labels; their count must equal the scan's ``num_points``."""
    path = Path(path)
    _require(path, "label file")
    size = path.stat().st_size
    if size % 4:
        raise ValueError(f"{path}: {size} bytes is not a multiple of 4 (one uint32 per point)")
    if size // 4 != num_points:
        raise ValueError(
            f"{path}: {size // 4} labels for a scan of {num_points} points; the label file "
            f"belongs to another scan or is truncated"
        )
    return np.fromfile(path, dtype=np.uint32)


# --- calibration ---------------------------------------------------------------------------
def parse_calib(path: str | Path) -> dict[str, np.ndarray]:
    """The ``KEY: v1 v2 ...`` lines of a KITTI calibration file, as float64 vectors."""
    path = Path(path)
    _require(path, "calibration file")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, values = line.partition(":")
        try:
            if not sep:
                raise ValueError("no ':'")
            out[key.strip()] = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{path}, line {n}: not 'KEY: numbers' ({err}): {line!r}") from None
    return out


def _matrix(
    calib: dict[str, np.ndarray], key: str, shape: tuple[int, int], path: Path
) -> np.ndarray:
    values = calib[key]
    if values.size != shape[0] * shape[1]:
        raise ValueError(f"{path}: {key} has {values.size} numbers, expected {shape[0] * shape[1]}")
    return values.reshape(shape)


def lidar_to_image(path: str | Path, camera: str = "P2") -> np.ndarray:
    """The ``3x4`` matrix taking homogeneous lidar points to camera ``camera``'s pixels.

    Two forms of calibration file are read:

    * odometry / SemanticKITTI (``calib.txt``): ``P2`` and ``Tr`` (velodyne -> rectified
      camera 0, already rectified), so the matrix is ``P2 @ Tr``, as PMF uses it;
    * KITTI object detection (``calib/FFFFFF.txt``): ``P2``, ``R0_rect`` (3x3) and
      ``Tr_velo_to_cam`` (velodyne -> unrectified camera 0), so the matrix is
      ``P2 @ R0_rect @ Tr_velo_to_cam`` (each padded to 4x4), KITTI's devkit formula.
    """
    path = Path(path)
    calib = parse_calib(path)
    if "Tr" in calib:
        forms = ("Tr",)
    elif "Tr_velo_to_cam" in calib:
        forms = ("R0_rect", "Tr_velo_to_cam")
    else:
        forms = ("Tr",)
    missing = [k for k in (camera, *forms) if k not in calib]
    if missing:
        raise ValueError(
            f"{path}: missing {', '.join(missing)} (found {', '.join(calib) or 'nothing'}); a "
            f"KITTI odometry calib.txt holds P0..P3 and Tr, an object-detection calib file "
            f"P0..P3, R0_rect and Tr_velo_to_cam"
        )
    proj = _matrix(calib, camera, (3, 4), path)
    if forms == ("Tr",):
        velo = np.eye(4)
        velo[:3] = _matrix(calib, "Tr", (3, 4), path)
        return proj @ velo
    rect, velo = np.eye(4), np.eye(4)
    rect[:3, :3] = _matrix(calib, "R0_rect", (3, 3), path)
    velo[:3] = _matrix(calib, "Tr_velo_to_cam", (3, 4), path)
    return proj @ rect @ velo


# --- images --------------------------------------------------------------------------------
def read_image(path: str | Path) -> np.ndarray:
    """A colour image as ``(H, W, 3)`` uint8."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _require(path, "camera image")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def read_dense_label(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A dense label PNG as ``(H, W)`` int64 class indices with 255 ignored.

    The PNG is single-channel 8-bit, the size of its camera image, in SemanticKITTI's learning
    ids: 0 unlabelled, 1..19 the classes; 255 is read as unlabelled too.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _require(path, "dense label image")
    try:
        with Image.open(path) as image:
            ids = np.asarray(image)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None
    if ids.ndim != 2 or ids.shape != tuple(shape):
        raise ValueError(
            f"{path}: a dense label must be one channel of the image's size {tuple(shape)}, "
            f"got shape {ids.shape}"
        )
    bad = np.setdiff1d(np.unique(ids), np.r_[0:20, IGNORE_INDEX])
    if bad.size:
        raise ValueError(f"{path}: values {bad.tolist()} are not learning ids 0..19 or 255")
    out = ids.astype(np.int64) - 1
    out[(ids == 0) | (ids == IGNORE_INDEX)] = IGNORE_INDEX
    return out


# --- label definitions ---------------------------------------------------------------------
@dataclass(frozen=True)
class LabelConfig:
    """The label definitions of ``semantic-kitti.yaml``, ready for training."""

    lut: np.ndarray  # (65536,) uint8: lower-16-bit semantic id -> class 0..18 or 255
    class_names: tuple[str, ...]
    class_frequencies: np.ndarray  # (C,) share of all points per class
    class_weights: np.ndarray  # (C,) float32, 1 / (f + eps), mean 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def map_labels(self, raw: np.ndarray) -> np.ndarray:
        """Raw ``uint32`` labels -> int64 classes ``0..C-1``; 255 for unlabelled and unknown."""
        return self.lut[np.asarray(raw, dtype=np.uint32) & 0xFFFF].astype(np.int64)


def load_label_config(path: str | Path) -> LabelConfig:
    """Read ``semantic-kitti.yaml``: ``labels``, ``learning_map``, ``learning_map_inv``,
    ``content``."""
    path = Path(path)
    _require(path, "semantic-kitti.yaml (label definitions)")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    missing = [
        k
        for k in ("labels", "learning_map", "learning_map_inv", "content")
        if not isinstance(spec, dict) or not isinstance(spec.get(k), dict)
    ]
    if missing:
        raise ValueError(f"{path}: missing the mapping(s) {missing} of semantic-kitti.yaml")
    learning_map = {int(k): int(v) for k, v in spec["learning_map"].items()}
    inverse = {int(k): int(v) for k, v in spec["learning_map_inv"].items()}
    num_classes = max(inverse)
    if sorted(inverse) != list(range(num_classes + 1)):
        raise ValueError(f"{path}: learning_map_inv keys must be 0..C, got {sorted(inverse)}")
    bad = {k: v for k, v in learning_map.items() if not 0 <= v <= num_classes or k >= 2**16}
    if bad:
        raise ValueError(f"{path}: learning_map entries outside 0..{num_classes}: {bad}")
    lut = np.full(2**16, IGNORE_INDEX, dtype=np.uint8)
    for raw, learning in learning_map.items():
        if learning > 0:
            lut[raw] = learning - 1
    names = tuple(
        str(spec["labels"].get(inverse[c], inverse[c])) for c in range(1, num_classes + 1)
    )
    freq = np.zeros(num_classes, dtype=np.float64)
    for raw, share in spec["content"].items():
        cls = lut[int(raw)] if 0 <= int(raw) < 2**16 else IGNORE_INDEX
        if cls != IGNORE_INDEX:
            freq[cls] += float(share)
    return LabelConfig(lut, names, freq, content_weights(freq))


def content_weights(frequencies: np.ndarray, eps: float = WEIGHT_EPS) -> np.ndarray:
    """``1 / (f + eps)`` rescaled to mean 1 (module doc)."""
    weights = 1.0 / (np.asarray(frequencies, dtype=np.float64) + eps)
    return (weights / weights.mean()).astype(np.float32)


# --- sequences -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanFiles:
    """The files of one frame."""

    sequence: int
    frame: str
    scan: Path
    label: Path
    image: Path
    dense_label: Path | None = None


def sequence_dir(kitti_dir: Path, sequence: int) -> Path:
    return Path(kitti_dir) / "sequences" / f"{int(sequence):02d}"


def list_scans(
    kitti_dir: Path,
    sequences: Iterable[int],
    yaml_path: Path,
    dense_label_dir: Path | None = None,
) -> list[ScanFiles]:
    """Every frame of ``sequences``, in order; a missing folder raises with the layout.

    Only the velodyne folder is listed here; the other files of each frame are checked by
    :func:`check_frames` once the frames to use are chosen. Dense labels, when used, are
    ``<dense_label_dir>/NN/FFFFFF.png``.
    """
    frames = []
    for seq in sequences:
        folder = sequence_dir(kitti_dir, seq)
        velodyne = folder / "velodyne"
        if not velodyne.is_dir():
            raise FileNotFoundError(
                layout_message(kitti_dir, yaml_path, f"sequence folder {velodyne} does not exist")
            )
        scans = sorted(p for p in velodyne.glob("*.bin") if _FRAME.fullmatch(p.stem))
        if not scans:
            raise FileNotFoundError(
                layout_message(kitti_dir, yaml_path, f"no FFFFFF.bin scans in {velodyne}")
            )
        for scan in scans:
            frames.append(
                ScanFiles(
                    int(seq),
                    scan.stem,
                    scan,
                    folder / "labels" / f"{scan.stem}.label",
                    folder / "image_2" / f"{scan.stem}.png",
                    None
                    if dense_label_dir is None
                    else Path(dense_label_dir) / f"{int(seq):02d}" / f"{scan.stem}.png",
                )
            )
    return frames


def check_frames(frames: Iterable[ScanFiles]) -> None:
    """Raise ``FileNotFoundError`` naming the first missing label or image (stat calls only)."""
    for f in frames:
        _require(f.label, f"label file of scan {f.scan}")
        _require(f.image, f"camera image (image_2) of scan {f.scan}")
        if f.dense_label is not None:
            _require(f.dense_label, f"dense label of scan {f.scan}")
