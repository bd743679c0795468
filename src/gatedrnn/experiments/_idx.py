"""IDX files (MNIST's format), gzipped or raw, read completely or refused (private; see ``data``)."""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
import zlib
from typing import TYPE_CHECKING

from ._datadir import CorruptData, DatasetMissing

if TYPE_CHECKING:
    import numpy as np

__all__ = ["parse_idx", "read_idx", "read_maybe_gzip"]

# IDX type codes (http://yann.lecun.com/exdb/mnist/): big-endian payload.
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_maybe_gzip(path: pathlib.Path) -> tuple[bytes | None, bytes]:
    """(the file's bytes if it is gzip else None, the content). Damaged gzip -> CorruptData."""
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            return data, gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; truncation: EOFError
            raise CorruptData(f"{path}: damaged or truncated gzip data ({type(exc).__name__}: {exc})") from exc
    if path.suffix == ".gz":
        raise CorruptData(f"{path}: the name ends in .gz but the file is not gzip data (starts with {data[:4]!r})")
    return None, data


def parse_idx(raw: bytes, path: pathlib.Path) -> np.ndarray:
    """The array of an IDX file's content (``path`` names it in errors)."""
    import numpy as np

    if len(raw) < 4:
        raise CorruptData(f"{path}: {len(raw)} bytes, too short for an IDX header (4 bytes of magic)")
    if raw[0] != 0 or raw[1] != 0:
        raise CorruptData(f"{path}: bad IDX magic: the first two bytes must be 0x00 0x00, got {raw[:4].hex(' ')}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise CorruptData(f"{path}: bad IDX magic: unknown type code 0x{code:02X} (expected one of {known})")
    if ndim == 0:
        raise CorruptData(f"{path}: bad IDX magic: 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptData(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[code])
    count = 1
    for d in dims:
        count *= d
    expected = count * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated payload" if got < expected else "extra bytes after the payload"
        raise CorruptData(
            f"{path}: {what}: dims {list(dims)} of {dtype.name} need {expected} bytes after the header, got {got}"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)  # native byte order, writable


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file, gzipped or raw (told apart by content, not by name).

    Checks the magic (``0x00 0x00 <type> <ndim>``), the type code (u8, i8, i16, i32, f32, f64),
    the dimensions and that the payload has exactly ``prod(dims) * itemsize`` bytes; anything else
    raises :class:`CorruptData` (naming the file and what is wrong). Returns a writable array in
    native byte order with shape ``dims``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetMissing(f"IDX file not found: {path}", looked_at=[path])
    return parse_idx(read_maybe_gzip(path)[1], path)
