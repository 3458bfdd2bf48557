"""The shard format `python -m resexp.pack` writes and data=shards reads, and its checks.

A packed folder holds, per split (train, and test where the source has one):
- `<split>-NNNNNN.tar`: a tar in the WebDataset layout: per sample `<key>.<ext>` (the image: the
  original file's bytes for image folders, PNG for in-memory sets) then `<key>.cls` (the label as
  decimal text); the key is the sample's index in its split, 9 digits. Plain ustar, so `tar`,
  webdataset, wids and DALI read it as it is;
- `<split>-NNNNNN.idx`: the shard's index, a .npy array of int64 rows (offset of the image's bytes in
  the tar, their size, label), so any sample is read with one positioned read;
- `manifest.json`, written last: class names, channels, per split the sample count, counts per class
  and the shards, each with its sample count, size and SHA-256 (and its index's SHA-256).

Reading checks every shard against the manifest: present, the size it had when packed (a truncated or
empty shard fails), its index the one packed with it (hash, rows, offsets inside the tar), no tar
beside them that the manifest does not list; each tar's SHA-256 is checked once per (size, mtime) and
remembered (the scan cache folder), so a later start does not read the data again. Every read checks
the tar header in front of the sample (its name and size), so an index that does not belong to its
tar cannot hand out wrong bytes silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resexp.errors import DataError

FORMAT, VERSION = "resexp-shards", 1
MANIFEST = "manifest.json"
KEY_DIGITS = 9
BLOCK = 512  # tar header and padding unit


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:06d}.tar"


def index_name(tar: str) -> str:
    return tar[: -len(".tar")] + ".idx"


def sample_key(i: int) -> str:
    return f"{i:0{KEY_DIGITS}d}"


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)  # releases the GIL on large blocks: shards hash in parallel threads
    return h.hexdigest()


def index_bytes(rows: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(rows, dtype=np.int64), allow_pickle=False)
    return buf.getvalue()


def tar_member(name: str, data: bytes) -> tuple[bytes, bytes]:
    """(header, data padded to whole blocks) of one regular-file member, as tarfile writes it."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode, info.mtime, info.uname, info.gname = 0o644, 0, "", ""
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    return header, data + b"\0" * (-len(data) % BLOCK)


# -------------------------------------------------------------------------------------------- read
@dataclass
class Split:
    """One split of a packed folder, as its shards' indexes list it."""

    shards: list[Path]  # tar files, in order
    shard: np.ndarray  # per sample: which shard (int32)
    offset: np.ndarray  # per sample: offset of its bytes in the tar
    size: np.ndarray
    labels: np.ndarray  # int64


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        if root.is_dir() and any(root.glob(".pack*")):
            raise DataError(f"{root} holds an unfinished pack (no {MANIFEST} yet): run the same "
                            "`python -m resexp.pack` command again to finish it")
        raise DataError(f"no {MANIFEST} in data.root {root}: point data.root at a folder written by "
                        "`python -m resexp.pack`")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}): pack the data again") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
        raise DataError(f"{path} is not a {FORMAT} v{VERSION} manifest: pack the data again with this resexp")
    return m


def check_listing(root: Path, manifest: dict) -> None:
    listed = {s["url"] for split in manifest["splits"].values() for s in split["shards"]}
    stray = sorted(p.name for p in root.glob("*.tar") if p.name not in listed)
    if stray:
        raise DataError(
            f"{root / stray[0]} is not in {root / MANIFEST}"
            + (f" (nor {len(stray) - 1} more)" if len(stray) > 1 else "")
            + ": its samples would be left out; pack the folder again, or move the shard(s) away"
        )


def load_split(root: Path, manifest: dict, split: str, num_classes: int) -> Split:
    """The split's shards checked against the manifest (sizes, index hashes and ranges), indexes joined."""
    entries = manifest["splits"][split]["shards"]
    if not entries:
        raise DataError(f"{root / MANIFEST} lists no shards for split {split}: pack the data again")
    paths, parts, n = [], [], 0
    for e in entries:
        tar, idx = root / e["url"], root / e["index"]
        for p, what in ((tar, "shard"), (idx, "index")):
            if not p.is_file():
                raise DataError(f"{what} {p} listed in {root / MANIFEST} is missing: restore it or pack again")
        size = tar.stat().st_size
        if size == 0:
            raise DataError(f"shard {tar} is empty (0 bytes; {e['bytes']} when packed): restore it or pack again")
        if size != e["bytes"]:
            raise DataError(f"shard {tar} has {size} bytes, {e['bytes']} when packed: it is truncated or was "
                            "changed; restore it or pack again")
        blob = idx.read_bytes()
        if hashlib.sha256(blob).hexdigest() != e["index_sha256"]:
            raise DataError(f"index {idx} is not the one packed with {tar.name} (its SHA-256 differs from "
                            f"{MANIFEST}): restore it or pack again")
        try:
            rows = np.load(io.BytesIO(blob), allow_pickle=False)
        except ValueError as e2:
            raise DataError(f"cannot read index {idx} ({e2}): restore it or pack again") from None
        if rows.ndim != 2 or rows.shape != (e["nsamples"], 3) or e["nsamples"] < 1:
            raise DataError(f"index {idx} has {len(rows)} rows, {MANIFEST} says {e['nsamples']} samples: "
                            "restore it or pack again")
        if (rows[:, 0] < BLOCK).any() or (rows[:, 0] + rows[:, 1] > size).any() or (rows[:, 0] % BLOCK).any():
            raise DataError(f"index {idx} points outside its tar {tar.name} ({size} bytes): it does not belong to "
                            "that shard; restore it or pack again")
        if (rows[:, 2] < 0).any() or (rows[:, 2] >= num_classes).any():
            raise DataError(f"index {idx} has labels outside 0..{num_classes - 1}: restore it or pack again")
        paths.append(tar)
        parts.append(rows)
        n += len(rows)
    rows = np.concatenate(parts)
    count = manifest["splits"][split]["count"]
    if n != count:
        raise DataError(f"the shards of split {split} hold {n} samples, {root / MANIFEST} says {count}: pack again")
    shard = np.repeat(np.arange(len(parts), dtype=np.int32), [len(p) for p in parts])
    return Split(paths, shard, rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].astype(np.int64))


def verify_hashes(root: Path, manifest: dict, splits: list[str], remembered: dict[str, str]) -> dict[str, str]:
    """Check each tar's SHA-256 against the manifest, except those `remembered` as verified at this
    (name, size, mtime); returns the updated memory. Threads: hashlib releases the GIL."""
    todo, memory = [], {}
    for split in splits:
        for e in manifest["splits"][split]["shards"]:
            p = root / e["url"]
            st = p.stat()
            stamp = f"{e['url']}\0{st.st_size}\0{st.st_mtime_ns}\0{e['sha256']}"
            memory[stamp] = e["sha256"]
            if remembered.get(stamp) != e["sha256"]:
                todo.append((p, e["sha256"]))
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(todo))) as pool:
            got = list(pool.map(lambda t: sha256_file(t[0]), todo))
        for (p, want), have in zip(todo, got, strict=True):
            if have != want:
                raise DataError(f"shard {p} does not match {root / MANIFEST} (SHA-256 {have[:12]}..., packed as "
                                f"{want[:12]}...): it is corrupt or was replaced; restore it or pack again")
    return memory


class ShardReader:
    """Positioned reads of samples from a split's tars; one per process (open files are not shared)."""

    def __init__(self, split: Split, max_open: int = 64):
        self.split, self.max_open = split, max_open
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __getstate__(self):
        return {"split": self.split, "max_open": self.max_open}

    def __setstate__(self, state):
        self.__init__(state["split"], state["max_open"])

    def _fd(self, k: int) -> int:
        if self._pid != os.getpid():  # a forked worker: its own descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.pop(k, None)
        if fd is None:
            if len(self._fds) >= self.max_open:
                old = next(iter(self._fds))
                os.close(self._fds.pop(old))
            fd = os.open(self.split.shards[k], os.O_RDONLY)
        self._fds[k] = fd  # most recently used last
        return fd

    def read(self, i: int) -> bytes:
        """Sample i's image bytes, after checking the tar header in front of them."""
        s = self.split
        k, off, size = int(s.shard[i]), int(s.offset[i]), int(s.size[i])
        buf = os.pread(self._fd(k), BLOCK + size, off - BLOCK)
        key = sample_key(i)  # keys are split indices
        try:
            info = tarfile.TarInfo.frombuf(buf[:BLOCK], "utf-8", "surrogateescape")
        except tarfile.TarError:
            info = None
        if len(buf) != BLOCK + size or info is None or info.size != size or not info.name.startswith(key + "."):
            raise DataError(f"shard {s.shards[k]} has no sample {key} of {size} bytes at offset {off}: the shard or "
                            "its index changed since the start-up check; restore it or pack again")
        return buf[BLOCK:]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
