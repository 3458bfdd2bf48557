"""Packing a data set into tar shards (the format: resexp/data/shard_format.py); the command is
resexp/pack.py.

- Image folders: every file's bytes as they are (no re-encoding: lossless, and packing is a copy),
  after the same start-up check as training (cached; data.on_bad_file: error stops naming the files,
  skip leaves them out and lists them in the manifest). One split, train.
- Sets held in memory (digits, synthetic, MNIST, Fashion-MNIST, CIFAR): each image as PNG (lossless),
  at the set's own size and channels, the published splits (train, and test where there is one).

Shards are cut at a target size and written by parallel worker threads (file copying, PNG encoding
and hashing release the GIL). Each is written under .pack/ and moved into place when complete;
manifest.json is written last, so it never lists a half-written shard. A pack stopped half-way is
resumed by the same command: the plan (.pack/plan.json) must match, finished shards are kept and the
rest written again; a different plan starts over, deleting only the files the old plan wrote.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from resexp.data import shard_format as fmt
from resexp.data.images import Seen, list_images, report_bad
from resexp.data.scan_cache import find_bad_images_cached
from resexp.errors import ConfigError, DataError
from resexp.files import atomic_write, atomic_write_text

log = logging.getLogger("resexp.data")

STATE = ".pack"  # under out/: the plan, the finished shards' records, shards being written


@dataclass
class Samples:
    """One split to pack: labels, per-sample bytes on demand, an extension and a size estimate each."""

    labels: np.ndarray
    ext: list[str]
    sizes: np.ndarray  # bytes (estimated for encoded images)
    get: Callable[[int], bytes]


@dataclass
class Packable:
    class_names: list[str]
    channels: int
    splits: dict[str, Samples]
    skipped: list[str]
    fingerprint: str  # what was packed: file list with sizes and mtimes, or the arrays' bytes
    describe: dict  # the source config values a training run wants (image_size, mean, std)


# ---------------------------------------------------------------------------------------- sources
def from_folder(dataset, cfg: DictConfig) -> Packable:
    root = dataset.root(cfg)
    seen = Seen()
    names, files = list_images(root, dataset.name, seen)
    rel = [p for p, _ in files]
    stats = [seen.stats.get(os.path.join(str(root), p), (-1, -1)) for p in rel]
    channels = cfg.channels or dataset.native_channels
    bad = find_bad_images_cached(root, rel, stats, channels)
    report_bad(bad, root, cfg.on_bad_file)
    bad_rel = {Path(p).relative_to(root).as_posix() for p, _ in bad}
    keep = [i for i, p in enumerate(rel) if p not in bad_rel]
    labels = np.array([files[i][1] for i in keep], dtype=np.int64)
    missing = sorted(set(range(len(names))) - set(labels.tolist()))
    if missing:
        raise DataError(f"class folder(s) with no readable image left after skipping bad files: "
                        f"{', '.join(str(root / names[i]) for i in missing)}; fix the files or remove the folder(s)")
    paths = [root / rel[i] for i in keep]

    def get(i: int) -> bytes:
        try:
            return paths[i].read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {paths[i]} while packing ({e.strerror or e}): it changed since the "
                            "check; restore it and run the pack again (finished shards are kept)") from None

    h = hashlib.sha256()
    for i in keep:
        h.update(f"{rel[i]}\0{stats[i][0]}\0{stats[i][1]}\0{files[i][1]}\n".encode())
    ext = [Path(rel[i]).suffix.lower().lstrip(".") for i in keep]
    sizes = np.array([stats[i][0] for i in keep], dtype=np.int64)
    samples = Samples(labels, ext, sizes, get)
    return Packable(names, channels, {"train": samples}, sorted(bad_rel), h.hexdigest(), _describe(cfg))


def from_arrays(dataset, cfg: DictConfig, seed: int) -> Packable:
    info = dataset.describe(cfg)
    arrays = dataset.arrays(cfg, seed)
    h = hashlib.sha256(f"{dataset.name}\0{seed}".encode())
    splits = {}
    channels = int(next(iter(arrays.values()))[0].shape[1])
    for name, (x, y) in arrays.items():
        xs = x.permute(0, 2, 3, 1).contiguous().numpy()  # NHWC for PIL
        h.update(xs.tobytes())
        h.update(y.numpy().astype(np.int64).tobytes())
        mode = "L" if channels == 1 else "RGB"

        def get(i: int, xs=xs, mode=mode) -> bytes:
            buf = io.BytesIO()
            a = xs[i][:, :, 0] if mode == "L" else xs[i]
            Image.fromarray(a, mode).save(buf, "PNG", compress_level=1)  # fast; decoding is what matters
            return buf.getvalue()

        probe = [len(get(i)) for i in range(min(64, len(xs)))]
        est = int(np.mean(probe)) if probe else 0
        splits[name] = Samples(y.numpy().astype(np.int64), ["png"] * len(xs), np.full(len(xs), est), get)
    return Packable(list(info.class_names), channels, splits, [], h.hexdigest(), _describe(cfg))


def _describe(cfg: DictConfig) -> dict:
    return {"image_size": int(cfg.image_size), "mean": None if cfg.mean is None else list(cfg.mean),
            "std": None if cfg.std is None else list(cfg.std)}


# ------------------------------------------------------------------------------------------- plan
def plan(src: Packable, shard_bytes: int) -> list[tuple[str, int, int, int]]:
    """[(split, shard number, first sample, end)]: consecutive samples, each shard about shard_bytes."""
    out = []
    for split, s in src.splits.items():
        # per sample: the image's header and padded bytes, and the label's member
        cost = fmt.BLOCK + (s.sizes + fmt.BLOCK - 1) // fmt.BLOCK * fmt.BLOCK + 2 * fmt.BLOCK
        start, acc, k = 0, 0, 0
        for i, c in enumerate(cost.tolist()):
            if acc and acc + c > shard_bytes:
                out.append((split, k, start, i))
                start, acc, k = i, 0, k + 1
            acc += c
        if start < len(cost):
            out.append((split, k, start, len(cost)))
    return out


def _write_shard(out: Path, src: Packable, split: str, k: int, lo: int, hi: int) -> dict:
    s = src.splits[split]
    name = fmt.shard_name(split, k)
    partial = out / STATE / f"{name}.partial"
    rows = np.zeros((hi - lo, 3), dtype=np.int64)
    h = hashlib.sha256()
    pos = 0
    with open(partial, "wb") as f:
        def put(b: bytes):
            nonlocal pos
            f.write(b)
            h.update(b)
            pos += len(b)

        for j, i in enumerate(range(lo, hi)):
            key = fmt.sample_key(i)
            data = s.get(i)
            label = int(s.labels[i])
            header, body = fmt.tar_member(f"{key}.{s.ext[i]}", data)
            put(header)
            rows[j] = (pos, len(data), label)
            put(body)
            for b in fmt.tar_member(f"{key}.cls", str(label).encode()):
                put(b)
        put(b"\0" * (2 * fmt.BLOCK))  # end of archive
        f.flush()
        os.fsync(f.fileno())
    blob = fmt.index_bytes(rows)
    atomic_write(out / fmt.index_name(name), lambda fi: fi.write(blob), durable=True)
    os.replace(partial, out / name)
    counts = np.bincount(rows[:, 2], minlength=len(src.class_names)).tolist()
    record = {"url": name, "index": fmt.index_name(name), "nsamples": hi - lo, "bytes": pos,
              "sha256": h.hexdigest(), "index_sha256": hashlib.sha256(blob).hexdigest(), "class_counts": counts}
    atomic_write_text(out / STATE / "done" / f"{name}.json", json.dumps(record))
    return record


def _finished(out: Path, name: str) -> dict | None:
    try:
        rec = json.loads((out / STATE / "done" / f"{name}.json").read_text())
        if (out / name).stat().st_size == rec["bytes"] and hashlib.sha256(
                (out / rec["index"]).read_bytes()).hexdigest() == rec["index_sha256"]:
            return rec
    except (OSError, ValueError, KeyError):
        pass
    return None


def _prepare(out: Path, fingerprint: dict) -> bool:
    """Make out/ ready; True when an interrupted pack of the same plan is resumed."""
    state = out / STATE
    if (out / fmt.MANIFEST).exists():
        raise ConfigError(f"out={out} already holds a finished pack ({fmt.MANIFEST}): choose another out= or "
                          "delete that folder first")
    old = None
    if (state / "plan.json").is_file():
        try:
            old = json.loads((state / "plan.json").read_text())
        except (OSError, ValueError):
            old = None
    elif out.exists() and any(p.name != STATE for p in out.iterdir()):
        raise ConfigError(f"out={out} is not empty and holds no unfinished pack: choose an empty or new folder")
    if old == fingerprint:
        return True
    if old is None and state.exists():  # stopped before its plan was written: nothing of it to keep
        shutil.rmtree(state)
    if old is not None:  # another plan: remove what it wrote, nothing else
        log.warning(f"out={out} holds an unfinished pack of something else (or with other settings): starting over")
        for split, k, _, _ in old.get("shards", []):
            name = fmt.shard_name(split, k)
            (out / name).unlink(missing_ok=True)
            (out / fmt.index_name(name)).unlink(missing_ok=True)
        shutil.rmtree(state)
    (state / "done").mkdir(parents=True, exist_ok=True)
    atomic_write_text(state / "plan.json", json.dumps(fingerprint))
    return False


def pack(src: Packable, out: Path, shard_bytes: int, workers: int, source: dict) -> dict:
    """Write the shards and the manifest; returns the manifest."""
    t0 = time.perf_counter()
    shards = plan(src, shard_bytes)
    fingerprint = {"source": src.fingerprint, "shard_bytes": shard_bytes, "shards": [list(s) for s in shards]}
    resumed = _prepare(out, fingerprint)
    for p in out.glob(f"{STATE}/*.partial"):  # a shard cut off by the interruption
        p.unlink()
    records: dict[tuple[str, int], dict] = {}
    if resumed:
        for split, k, _, _ in shards:
            rec = _finished(out, fmt.shard_name(split, k))
            if rec is not None:
                records[(split, k)] = rec
        log.warning(f"resuming the pack in {out}: {len(records)} of {len(shards)} shard(s) already written")
    todo = [s for s in shards if (s[0], s[1]) not in records]
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(_write_shard, out, src, *s) for s in todo]
        for (split, k, _, _), f in zip(todo, futures, strict=True):
            records[(split, k)] = f.result()
    finally:  # an error or Ctrl-C: the shards not started are dropped, not written while we wait
        pool.shutdown(wait=True, cancel_futures=True)
    manifest = {"format": fmt.FORMAT, "version": fmt.VERSION, "class_names": src.class_names,
                "channels": src.channels, "source": source, "train_with": src.describe, "skipped": src.skipped,
                "splits": {}}
    for split, s in src.splits.items():
        entries = [records[(sp, k)] for sp, k, _, _ in shards if sp == split]
        counts = np.bincount(s.labels, minlength=len(src.class_names)).tolist()
        manifest["splits"][split] = {"count": len(s.labels), "class_counts": counts,
                                     "shards": [{k: v for k, v in e.items() if k != "class_counts"} for e in entries]}
    atomic_write_text(out / fmt.MANIFEST, json.dumps(manifest, indent=1))
    shutil.rmtree(out / STATE, ignore_errors=True)
    total = sum(r["bytes"] for r in records.values())
    n = sum(len(s.labels) for s in src.splits.values())
    log.info(f"packed {n:,} samples into {len(shards)} shard(s), {total / 2**20:.1f} MiB, in "
             f"{time.perf_counter() - t0:.1f} s ({len(todo)} written now)")
    return manifest


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    t = str(text).strip().upper().replace("IB", "B")
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "B": 1}
    for u, mult in units.items():
        if t.endswith(u):
            try:
                return int(float(t[: -len(u)]) * mult)
            except ValueError:
                break
    try:
        return int(t)
    except ValueError:
        raise ConfigError(f"shard_size={text} is not a size: give e.g. 256MB, 1GB or a number of bytes") from None

