"""The image folders' bad-file check, cached per file so that a second start does not decode again.

A file's entry is keyed by (path relative to the root, size, mtime in ns): an unchanged file is not
decoded again, a new, changed or replaced file is. The cache sits in the user's cache folder
($RESEXP_CACHE, else $XDG_CACHE_HOME/resexp, else ~/.cache/resexp), under scans/, one file per
(real path of the root, channels), and never next to the data: data folders on clusters are often
read-only or shared by many users, and a file written into them would race between users' jobs and
travel with copies of the data. Writes are atomic (a sweep's jobs may write it at once: the last
complete file wins, and each is correct).

What it cannot see: a file whose bytes change while its size and mtime stay (bit rot, or a tool that
restores mtimes). Such a file still fails with its path when training reads it. A file written less
than RACY_NS before the check is not cached (file-system clocks are coarse: a change within the same
tick would keep its mtime), the rule git uses for its index.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from resexp.data.images import find_bad_images
from resexp.files import atomic_write

log = logging.getLogger("resexp.data")

VERSION = 1
RACY_NS = 2_000_000_000  # coarser than any file system's mtime tick (FAT: 2 s)


def cache_dir() -> Path:
    env = os.environ.get("RESEXP_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "resexp"


def cache_file(root: Path, channels: int) -> Path:
    real = os.path.realpath(root)
    digest = hashlib.sha256(f"{real}\0{channels}".encode()).hexdigest()[:20]
    return cache_dir() / "scans" / f"{digest}.npz"


def _keys(rel: Sequence[str], stats: Sequence[tuple[int, int]]) -> np.ndarray:
    out = np.empty(len(rel), dtype=np.uint64)
    for i, (p, (size, mtime)) in enumerate(zip(rel, stats, strict=True)):
        h = hashlib.blake2b(f"{p}\0{size}\0{mtime}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "little")
    return out


def _load(path: Path, root: Path, channels: int) -> tuple[np.ndarray, dict[int, str]]:
    """(keys of good files, {key of a bad file: its error}); empty when absent or unreadable."""
    empty = (np.zeros(0, dtype=np.uint64), {})
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != VERSION or meta.get("root") != os.path.realpath(root) \
                    or meta.get("channels") != channels:
                return empty
            bad = {int(k): err for k, err in meta["bad"]}
            return z["good"].astype(np.uint64), bad
    except FileNotFoundError:
        return empty
    except Exception as e:  # noqa: BLE001 - a damaged cache is only a slower start
        log.warning(f"ignoring the unreadable bad-file cache {path} ({type(e).__name__}: {e}): checking every file")
        return empty


def _save(path: Path, root: Path, channels: int, good: np.ndarray, bad: dict[int, str]) -> None:
    meta = {"version": VERSION, "root": os.path.realpath(root), "channels": channels,
            "bad": [[str(k), err] for k, err in bad.items()]}
    buf = io.BytesIO()
    np.savez(buf, good=np.sort(good), meta=np.array(json.dumps(meta)))
    try:
        atomic_write(path, lambda f: f.write(buf.getvalue()))
    except OSError as e:  # a read-only home: the next start checks again, nothing else changes
        log.warning(f"cannot write the bad-file cache {path} ({e.strerror or e}); the next start checks every "
                    "file again (set RESEXP_CACHE to a writable folder)")


def find_bad_images_cached(root: Path, rel: Sequence[str], stats: Sequence[tuple[int, int]],
                           channels: int) -> list[tuple[Path, str]]:
    """find_bad_images for root/rel[i], decoding only the files that the cache has not seen with this
    size and mtime; the cache is then updated to the files listed now."""
    t0 = time.perf_counter()
    path = cache_file(root, channels)
    keys = _keys(rel, stats)
    good, bad_known = _load(path, root, channels)
    known_good = np.isin(keys, good)
    unknown = np.flatnonzero(~known_good).tolist()
    errs: dict[int, str] = {i: bad_known[int(keys[i])] for i in unknown if int(keys[i]) in bad_known}
    todo = [i for i in unknown if i not in errs]
    base = str(root) + os.sep
    paths = [base + rel[i] for i in todo]
    found = {str(p): err for p, err in find_bad_images(paths, channels)}
    errs.update({i: found[p] for i, p in zip(todo, paths, strict=True) if p in found})
    n = len(rel)
    # only settled files are remembered: one written within the last clock tick may change unseen
    mtimes = np.fromiter((s[1] for s in stats), dtype=np.int64, count=n)
    settled = mtimes < time.time_ns() - RACY_NS
    ok = np.ones(n, dtype=bool)
    ok[list(errs)] = False
    keep_bad = {int(keys[i]): e for i, e in errs.items() if settled[i]}
    if todo or len(good) != int((ok & settled).sum()) or keep_bad.keys() != bad_known.keys():
        _save(path, root, channels, keys[ok & settled], keep_bad)
    log.info(f"checked {len(todo):,} of {n:,} image files under {root} for damage in "
             f"{time.perf_counter() - t0:.1f} s ({n - len(todo):,} unchanged since the cached check {path})")
    return [(root / rel[i], errs[i]) for i in sorted(errs)]
