"""Image folders: any <root>/<class>/<image> tree (data=image_folder, and the birds preset), listed and
checked at start-up (the check is cached: resexp/data/scan_cache.py), streamed from disk (FileSource)
or decoded once into memory (data.loader=memory)."""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from omegaconf import DictConfig

from resexp.data.common import check_num_classes, is_missing, stratified_split
from resexp.data.images import Seen, class_folders, list_images, open_image, report_bad
from resexp.data.scan_cache import find_bad_images_cached
from resexp.data.sources import check_val, need_val_split, set_info
from resexp.data.types import ArraySource, DataInfo, FileSource, ShardSource
from resexp.errors import ConfigError, DataError

log = logging.getLogger("resexp.data")

class ImageFolder:
    """Any root/<class>/<image> tree (see resexp/data/images.py for the rules), streamed from disk."""

    name = "image_folder"
    native_channels = 3

    def root(self, cfg: DictConfig) -> Path:
        if is_missing(cfg, "root"):
            raise ConfigError(
                f"data.root is required for data={self.name}: pass data.root=/path/to/{self._example} "
                "(a folder with one sub-folder per class)"
            )
        return Path(str(cfg.root)).expanduser()

    _example = "images"

    def describe(self, cfg: DictConfig) -> DataInfo:
        root = self.root(cfg)
        names = class_folders(root, self.name)
        check_num_classes(cfg, len(names), f"data.root {root}", names)
        return set_info(cfg, len(names), cfg.channels or self.native_channels, names)

    def load(self, cfg: DictConfig, seed: int) -> FileSource:
        root = self.root(cfg)
        need_val_split(cfg, self.name)
        seen = Seen()
        names, files = list_images(root, self.name, seen)
        check_num_classes(cfg, len(names), f"data.root {root}", names)
        info = set_info(cfg, len(names), cfg.channels or self.native_channels, names)
        rel = [p for p, _ in files]
        base = str(root) + os.sep
        bad = find_bad_images_cached(root, rel, [seen.stats.get(base + p, (-1, -1)) for p in rel], info.in_channels)
        report_bad(bad, root, cfg.on_bad_file)
        skipped = []
        if bad:
            bad_rel = {Path(p).relative_to(root).as_posix() for p, _ in bad}
            skipped = sorted(bad_rel)
            files = [(p, lab) for p, lab in files if p not in bad_rel]
            left = {lab for _, lab in files}
            gone = [str(root / n) for i, n in enumerate(names) if i not in left]
            if gone:
                raise DataError(
                    f"class folder(s) with no readable image left after skipping bad files: {', '.join(gone)}; "
                    "fix the files or remove the folder(s)"
                )
        labels = torch.tensor([lab for _, lab in files], dtype=torch.int64)
        tr, va = stratified_split(labels, cfg.val_split, seed)
        check_val(len(va), len(labels), cfg, f"data.root {root}")
        # a class with too few images keeps them all for training: its accuracy goes unmeasured
        unvalidated = sorted(set(range(len(names))) - set(labels[va].tolist()))
        if unvalidated:
            log.warning(f"class(es) {', '.join(names[i] for i in unvalidated)} under data.root {root} have no "
                        f"validation image (data.val_split={cfg.val_split}): add images or raise data.val_split")
        train = [(base + files[i][0], files[i][1]) for i in tr.tolist()]  # str: cheap by the million
        val = [(base + files[i][0], files[i][1]) for i in va.tolist()]
        split = {
            "seed": seed,
            "val_split": float(cfg.val_split),
            "root": str(root),
            "class_names": names,
            "train": [files[i][0] for i in tr.tolist()],
            "val": [files[i][0] for i in va.tolist()],
            "skipped": skipped,
        }
        return FileSource(info, root, train, val, split, len(skipped))


class Birds(ImageFolder):
    """The seeds' bird photos (R4/R5): an image folder preset with 4 classes."""

    name = "birds"
    _example = "birds"


def decode_files(source: FileSource | ShardSource, cfg: DictConfig, device: torch.device) -> ArraySource:
    """An image folder (or packed shards) decoded once (eval geometry: resize + centre crop) into uint8
    tensors."""
    from resexp.data.augment import eval_tensor, eval_uint8
    from resexp.data.images import decode_tensor

    c, s = source.info.in_channels, source.info.image_size
    n = len(source.train) + len(source.val) + (len(source.test) if source.test not in (None, source.val) else 0)
    need = n * c * s * s
    free = _free_bytes(device)
    if need > free // 2:
        raise ConfigError(
            f"data.loader=memory: {n} images at {c}x{s}x{s} need {need / 2**30:.2f} GiB, more than half of the "
            f"{free / 2**30:.2f} GiB free on {device}: use data.loader=stream (or auto)"
        )

    shards = isinstance(source, ShardSource)
    tensors = str(cfg.get("decode", "pil")) != "pil"  # decode as the streaming path would (torchvision)

    def one(item):
        if tensors:
            blob = item[0].reader.read(int(item[1])) if shards else Path(item[0]).read_bytes()
            return eval_tensor(decode_tensor(blob, c), s)
        where = io.BytesIO(item[0].reader.read(int(item[1]))) if shards else item[0]
        return eval_uint8(open_image(where, c, (s, s)), s)

    out = []
    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
        for k, part in enumerate((source.train, source.val, source.test)):
            if part is None or (k == 2 and part is source.val):  # no test split, or validating on it
                out.append(None if part is None else out[1])
                continue
            items = [(part, i) for i in part.indices] if shards else part
            x = torch.stack(list(pool.map(one, items, chunksize=16))) if len(items) else torch.zeros(
                0, c, s, s, dtype=torch.uint8)
            y = torch.as_tensor(part.labels, dtype=torch.int64) if shards else torch.tensor(
                [lab for _, lab in part], dtype=torch.int64)
            out.append((x, y))
    return ArraySource(source.info, out[0], out[1], out[2], source.split, source.skipped)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
