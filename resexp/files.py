"""One atomic file write for everything resexp saves (checkpoints, metrics.json, exports): a reader
never sees half a file, and a failed or killed write leaves the previous file intact."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# the temporary file beside `path`: `.<name>.<mkstemp's 8 random characters>.tmp`
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


def atomic_write(path: Path, write: Callable[[BinaryIO], object], durable: bool = False) -> None:
    """Call `write(file)` on a unique temporary file beside `path`, then rename it over `path`.

    `durable`: fsync the file and the directory, so the new file survives a power cut (checkpoints).
    A failed write removes the temporary file and raises; a kill -9 leaves it behind (the checkpoint
    code clears those of its own files when a run next starts there).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
