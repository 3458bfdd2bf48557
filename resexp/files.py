"""One atomic file write for everything resexp saves (checkpoints, metrics.json, exports): a reader
never sees half a file, and a failed or killed write leaves the previous file intact. A full disk is
one line naming the file and the file system; a folder that refuses files is found before a run starts."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from resexp.errors import DiskFullError

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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _no_space(e):
            raise DiskFullError(f"no space left on {_mount_point(path.parent)} while writing "
                                f"{path} ({_free(path.parent)} free)", path) from e
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    """`text` as UTF-8 through atomic_write (metrics.json, run_info.json, model cards)."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))


def _no_space(e: BaseException | None) -> bool:
    """Whether the disk or the quota ran out somewhere in e's chain (torch.save reports it as a
    RuntimeError, "unexpected pos ...", raised while handling the OSError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _mount_point(folder: Path) -> Path:
    folder = folder.resolve()
    while not os.path.ismount(folder):
        folder = folder.parent
    return folder


def _free(folder: Path) -> str:
    free = shutil.disk_usage(folder).free
    return f"{free / 2**20:.1f} MiB" if free >= 2**20 else f"{free / 2**10:.0f} KiB"


def check_writable(folder: Path) -> None:
    """Raise OSError (its filename: the folder that refused) unless a file can be created in `folder`
    (or, when it does not exist yet, in the nearest folder above it that does). A real file, not
    os.access: root writes past permission bits, but not into a read-only mount or an immutable
    folder (chattr +i)."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}resexp-write-test.", suffix=TEMP_SUFFIX, dir=folder)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(folder)) from None  # the folder that refused, not the probe
    os.close(fd)
    os.unlink(probe)
