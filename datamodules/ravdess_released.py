"""The pre-extracted RAVDESS features of the authors' released code (MFH / NTDH).

The release reads a folder of per-clip files listed by one CSV per split::

    <features_dir>/aud_features/<audio file>.npy     audio features (n_features, frames)
    <features_dir>/vid_features/<image file>         an image (.jpg / .png, read as RGB), or a
                                                     .npy array (H, W, 3) RGB or (H, W) grey
    <features_dir>/data_file/spa_dl.csv              training split
    <features_dir>/data_file/spa_val.csv             validation split
    <features_dir>/data_file/spa_test.csv            test split

Each CSV has a header row, then ``audio file, image file, label`` per clip, the file names
relative to ``aud_features/`` and ``vid_features/`` and the label the class index 0..7
(emotion id - 1). When a file name is a RAVDESS name (``03-01-05-01-02-01-12.npy``), its
label must agree with the name's emotion; a disagreement is an error, never silently kept.
The splits are the CSVs' own (the release's are not the 4-actor folds). Audio comes out as
float32 ``(1, n_features, frames)``, images as uint8 ``(3, H, W)`` (grey as one channel);
every file of a modality must have the same shape.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from datamodules.ravdess_files import EMOTIONS, name_label

RELEASED_CSVS = {"train": "spa_dl.csv", "val": "spa_val.csv", "test": "spa_test.csv"}
AUDIO_DIR, IMAGE_DIR, CSV_DIR = "aud_features", "vid_features", "data_file"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def released_layout(features_dir: str | Path) -> str:
    """The expected layout, for error messages."""
    root = Path(features_dir)
    csvs = ", ".join(str(root / CSV_DIR / name) for name in RELEASED_CSVS.values())
    return (
        f"the authors' pre-extracted form: {csvs} (header, then 'audio file, image file, "
        f"label' rows), with the files under {root / AUDIO_DIR} (.npy) and {root / IMAGE_DIR} "
        f"(images or .npy)"
    )


def missing_released_files(features_dir: str | Path) -> list[str]:
    root = Path(features_dir)
    wanted = [root / CSV_DIR / name for name in RELEASED_CSVS.values()]
    wanted += [root / AUDIO_DIR, root / IMAGE_DIR]
    return [str(p) for p in wanted if not p.exists()]


def read_rows(csv_path: Path) -> list[tuple[str, str, int]]:
    """``(audio file, image file, label)`` rows of one split's CSV, checked."""
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ValueError(f"{csv_path}: expected a header row and at least one clip")
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 3:
            raise ValueError(f"{csv_path}, line {line}: expected audio file, image file, label")
        audio, image, raw = (c.strip() for c in row[:3])
        try:
            label = int(float(raw))
        except ValueError:
            raise ValueError(f"{csv_path}, line {line}: label {raw!r} is not a number") from None
        if not 0 <= label < len(EMOTIONS) or float(raw) != label:
            raise ValueError(f"{csv_path}, line {line}: label {raw!r} is not a class 0..7")
        for name in (audio, image):
            emotion_label = name_label(Path(name).stem)
            if emotion_label is not None and emotion_label != label:
                raise ValueError(
                    f"{csv_path}, line {line}: label {label} ({EMOTIONS[label]}) disagrees "
                    f"with {name}, whose emotion field says {emotion_label} "
                    f"({EMOTIONS[emotion_label]}); labels are emotion id - 1"
                )
        out.append((audio, image, label))
    return out


def load_audio(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npy ({err})") from None
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected audio features (n_features, frames), got {array.shape}")
    return array.astype(np.float32)[None]


def load_image(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable .npy ({err})") from None
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB" if img.mode != "L" else "L"))
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
    else:
        raise ValueError(f"{path}: expected an image ({', '.join(IMAGE_SUFFIXES)}) or a .npy")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"{path}: expected an (H, W, 3) RGB or (H, W) image, got {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 pixels, got {array.dtype}")
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _stack(arrays: list[np.ndarray], paths: list[Path]) -> np.ndarray:
    first = arrays[0].shape
    for array, path in zip(arrays, paths, strict=True):
        if array.shape != first:
            raise ValueError(f"{path}: shape {array.shape} differs from {paths[0]}'s {first}")
    return np.stack(arrays)


def load_released_split(
    features_dir: str | Path, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Audio float32 ``(N, 1, F, T)``, images uint8 ``(N, C, H, W)``, labels int64 ``(N,)``."""
    root = Path(features_dir)
    csv_path = root / CSV_DIR / RELEASED_CSVS[split]
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found; expected {released_layout(root)}")
    rows = read_rows(csv_path)
    audio_paths = [root / AUDIO_DIR / a for a, _, _ in rows]
    image_paths = [root / IMAGE_DIR / i for _, i, _ in rows]
    for path in (*audio_paths, *image_paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}, listed in {csv_path}, does not exist")
    audio = _stack([load_audio(p) for p in audio_paths], audio_paths)
    images = _stack([load_image(p) for p in image_paths], image_paths)
    labels = np.array([label for _, _, label in rows], dtype=np.int64)
    return audio, images, labels


def released_shapes(features_dir: str | Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of one audio and one image sample, from the training CSV's first row."""
    root = Path(features_dir)
    csv_path = root / CSV_DIR / RELEASED_CSVS["train"]
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found; expected {released_layout(root)}")
    audio, image, _ = read_rows(csv_path)[0]
    return (
        tuple(load_audio(root / AUDIO_DIR / audio).shape),
        tuple(load_image(root / IMAGE_DIR / image).shape),
    )
