"""MNIST-format (IDX) files read as their publishers distribute them: `name` or `name.gz`.

Checked by content, not by archive checksum: repackaged copies (Debian's Fashion-MNIST) are
compressed differently but hold the same bytes once unpacked. A file that is truncated, corrupt,
of another type or of another size stops with one line naming it; nothing is ever written.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from resexp.errors import DataError

UBYTE = 0x08  # IDX type code of unsigned bytes, the only one MNIST-style sets use


def find(folder: Path, name: str) -> Path | None:
    """`folder/name`, else `folder/name.gz` (the download as it came), else None."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        why = "truncated" if isinstance(e, EOFError) else f"{type(e).__name__}: {e}"
        raise DataError(f"cannot read {path} ({why}): the file is corrupt; copy or download it again") from None


def read(path: Path, count: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """The array in an IDX file of unsigned bytes, checked to hold `count` items of `item_shape`."""
    data = _read_bytes(path)
    ndim = 1 + len(item_shape)
    what = "images" if item_shape else "labels"
    header = 4 + 4 * ndim
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != UBYTE or data[3] != ndim:
        raise DataError(
            f"{path} is not an IDX file of {what} (its first bytes are {data[:4].hex() or 'missing'}, "
            f"expected 0000{UBYTE:02x}{ndim:02x}): is it the right file?"
        )
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = (count, *item_shape)
    if dims != expected:
        raise DataError(f"{path} holds {what} of shape {dims}, expected {expected}: is it the right file?")
    size = header + int(np.prod(expected))
    if len(data) != size:
        raise DataError(f"{path} has {len(data)} bytes, its header says {size}: the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(expected)
