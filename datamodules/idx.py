"""Reader of the IDX format, the on-disk format of MNIST (LeCun et al.).

An IDX file is a big-endian header followed by the raw array::

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    then        d big-endian uint32 sizes, then prod(sizes) elements, big-endian, C order

so MNIST's images start with the magic number 2051 (``0x00000803``: uint8, 3 dimensions) and
its labels with 2049 (``0x00000801``: uint8, 1 dimension). Files may be gzipped (``.gz``, as
distributed); the reader recognises gzip by its own magic bytes, whatever the file's name.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """An IDX file that is truncated, has a wrong magic number, or is otherwise malformed."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise IDXFormatError(
            path, f"corrupt or truncated gzip stream ({err}); download the file again"
        ) from None


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzipped or not), in native byte order.

    With ``ndim`` given, a file of another rank is rejected (MNIST images: 3, labels: 1).
    Raises :class:`IDXFormatError` naming the file and the problem when the magic number is
    wrong, the header or the payload is shorter than the header declares, or bytes trail it.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(path, f"truncated: {len(data)} bytes, shorter than the 4-byte magic")
    magic = int.from_bytes(data[:4], "big")
    type_code, rank = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code not in IDX_TYPES or rank == 0:
        raise IDXFormatError(
            path,
            f"wrong magic number 0x{magic:08X}: an IDX file starts with 0x0000, a type code "
            f"in {{{', '.join(f'0x{c:02X}' for c in IDX_TYPES)}}} and its number of "
            f"dimensions (MNIST: 0x00000803 = 2051 for images, 0x00000801 = 2049 for labels)",
        )
    if ndim is not None and rank != ndim:
        raise IDXFormatError(
            path, f"magic number 0x{magic:08X} declares {rank} dimension(s), expected {ndim}"
        )
    header = 4 + 4 * rank
    if len(data) < header:
        raise IDXFormatError(
            path, f"truncated header: {len(data)} bytes, the {rank} sizes need {header}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    dtype = IDX_TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    payload = len(data) - header
    if payload < expected:
        raise IDXFormatError(
            path,
            f"truncated: the header declares shape {shape} of {dtype.name} ({expected} bytes "
            f"of data), the file holds {payload}; download the file again",
        )
    if payload > expected:
        raise IDXFormatError(
            path,
            f"{payload - expected} bytes trail the {expected} bytes of data that the header "
            f"declares (shape {shape}); is this an IDX file?",
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="))
