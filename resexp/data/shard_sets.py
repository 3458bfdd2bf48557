"""data=shards: a folder of tar shards written by `python -m resexp.pack` (format and checks:
resexp/data/shard_format.py), read sample by sample through the streaming path's seeded batch
order, so order, augmentation, resume and DDP sharding are exactly those of every other set.

Splits: the packed train split is split into train/val by data.val_split with the seed, the same
stratified split the packed source makes (so a packed image folder or MNIST gets the same validation
images as the original); data.val_split=0 validates on the packed test split where there is one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from resexp.data import shard_format as fmt
from resexp.data.common import check_num_classes, is_missing, stratified_split
from resexp.data.scan_cache import cache_dir
from resexp.data.sources import check_val, set_info
from resexp.data.types import DataInfo, ShardPart, ShardSource
from resexp.errors import ConfigError, DataError
from resexp.files import atomic_write_text

log = logging.getLogger("resexp.data")


def _memory_file(root: Path) -> Path:
    digest = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:20]
    return cache_dir() / "shards" / f"{digest}.json"


def _verified(root: Path, manifest: dict, splits: list[str]) -> None:
    """Each shard's SHA-256 checked once per (size, mtime), remembered in the user's cache folder."""
    t0 = time.perf_counter()
    path = _memory_file(root)
    try:
        remembered = json.loads(path.read_text())
    except (OSError, ValueError):
        remembered = {}
    memory = fmt.verify_hashes(root, manifest, splits, remembered)
    if memory != remembered:
        try:
            atomic_write_text(path, json.dumps(memory))
        except OSError as e:
            log.warning(f"cannot write {path} ({e.strerror or e}): the next start hashes the shards again")
        log.info(f"checked the SHA-256 of the shards in {root} in {time.perf_counter() - t0:.1f} s")


class Shards:
    name = "shards"
    native_channels = 3

    def root(self, cfg: DictConfig) -> Path:
        if is_missing(cfg, "root"):
            raise ConfigError("data.root is required for data=shards: pass data.root=/path/to/packed (a folder "
                              "written by `python -m resexp.pack`)")
        root = str(cfg.root)
        if "://" in root:
            raise ConfigError(f"data.root={root}: data=shards reads local or mounted folders only; copy the "
                              "shards to a local disk (or mount the bucket) and point data.root there")
        return Path(root).expanduser()

    def _manifest(self, cfg: DictConfig) -> tuple[Path, dict]:
        root = self.root(cfg)
        if not root.is_dir():
            raise DataError(f"data.root {root} does not exist or is not a folder (data=shards)")
        return root, fmt.read_manifest(root)

    def channels_for(self, cfg: DictConfig) -> int:
        """The packed channels when the manifest can be read, else RGB (the packer's `train with` line
        passes data.channels for grey sets, so a run's own config does not need the files)."""
        try:
            return int(fmt.read_manifest(self.root(cfg))["channels"])
        except (ConfigError, DataError, KeyError, ValueError, OSError):
            return self.native_channels

    def describe(self, cfg: DictConfig) -> DataInfo:
        root, m = self._manifest(cfg)
        names = list(m["class_names"])
        check_num_classes(cfg, len(names), f"data.root {root}", names)
        return set_info(cfg, len(names), cfg.channels or int(m["channels"]), names)

    def load(self, cfg: DictConfig, seed: int) -> ShardSource:
        root, m = self._manifest(cfg)
        info = self.describe(cfg)
        fmt.check_listing(root, m)
        splits = [s for s in ("train", "val", "test") if s in m["splits"]]
        if "train" not in splits:
            raise DataError(f"{root / fmt.MANIFEST} has no train split: pack the data again")
        read = {s: fmt.ShardReader(fmt.load_split(root, m, s, info.num_classes)) for s in splits}
        _verified(root, m, splits)  # after the cheap checks, which name what is wrong more precisely
        n_train = len(read["train"].split.labels)
        test = ShardPart(read["test"], np.arange(len(read["test"].split.labels))) if "test" in read else None
        split = {"seed": seed, "val_split": float(cfg.val_split), "root": str(root), "class_names": info.class_names}
        if "val" in read:
            train = ShardPart(read["train"], np.arange(n_train))
            val = ShardPart(read["val"], np.arange(len(read["val"].split.labels)))
        elif cfg.val_split > 0:
            tr, va = stratified_split(torch.from_numpy(read["train"].split.labels), cfg.val_split, seed)
            check_val(len(va), n_train, cfg, f"data.root {root}")
            train, val = ShardPart(read["train"], tr.numpy()), ShardPart(read["train"], va.numpy())
            split["val_indices"] = va.tolist()
        elif test is not None:
            train, val = ShardPart(read["train"], np.arange(n_train)), test
        else:
            raise ConfigError(f"data.val_split=0 but {root} has no packed test split to validate on: pass e.g. "
                              "data.val_split=0.1")
        return ShardSource(info, root, train, val, test, split, len(m.get("skipped", [])))
