"""`python -m resexp.pack out=<dir> (src=<image folder> | data=<name>) [shard_size=256MB] [workers=N]
[on_bad_file=error|skip] [seed=0] [data.key=value ...]`

Packs an image folder, or any data set resexp reads (digits, synthetic, mnist, fashion_mnist,
cifar10, cifar100, image_folder, birds), into tar shards in the WebDataset layout with an index per
shard and a manifest (resexp/data/shard_format.py); train from them with data=shards data.root=<dir>.
Run the same command again to resume an interrupted pack.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from resexp.cli import Command, Option, run_command
from resexp.errors import ConfigError

COMMAND = Command("pack", "an image folder or a data set resexp reads as tar shards (data=shards)", {
    "out": Option(None, "the folder to write the shards and manifest.json into (new or empty)", required=True),
    "src": Option(None, "an image folder (<src>/<class>/<image>): the same as data=image_folder data.root=<src>"),
    "data": Option(None, "a data set resexp reads: digits, synthetic, mnist, fashion_mnist, cifar10, cifar100, "
                         "image_folder, birds"),
    "shard_size": Option("256MB", "target size of one shard (e.g. 64MB, 1GB)"),
    "workers": Option(min(8, os.cpu_count() or 1), "shards written at once"),
    "on_bad_file": Option(None, "image folders: error (stop, naming the files) or skip (leave them out, listed "
                                "in the manifest); default: the data config's (error)"),
    "seed": Option(0, "data=synthetic: the seed its images are generated from"),
}, prefixes={"data.": "the data config, e.g. data.root=... data.download=false"})


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    from resexp.config import compose, overridden
    from resexp.data import DATASETS
    from resexp.data.packing import from_arrays, from_folder, pack, parse_size

    args, data_overrides = COMMAND.parse(argv)
    name, src = args["data"], args["src"]
    if name is None and src is None:
        raise ConfigError("give src=<image folder> or data=<name> (python -m resexp.pack --help for usage)")
    node = compose([f"data={name or 'image_folder'}"]).data  # data.root may be missing (???) until src= sets it
    data = OmegaConf.to_container(node, resolve=True, throw_on_missing=False, enum_to_str=True)
    if src is not None:
        data["root"] = str(src)
    if args["on_bad_file"] is not None:
        data["on_bad_file"] = args["on_bad_file"]
    cfg = overridden("data", data, data_overrides)  # the `data.*` overrides as evaluate and export apply them
    dataset = DATASETS.get(cfg.name)
    if cfg.name == "shards":
        raise ConfigError("data=shards is already packed: pack its source instead")
    workers = int(args["workers"])
    if workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    shard_bytes = parse_size(args["shard_size"])
    if shard_bytes < 4096:
        raise ConfigError(f"shard_size={args['shard_size']} is too small: give at least 4KB (e.g. 256MB)")
    if hasattr(dataset, "arrays"):
        packable = from_arrays(dataset, cfg, int(args["seed"]))
    else:
        packable = from_folder(dataset, cfg)
    out = Path(str(args["out"])).expanduser()
    source = {"data": str(cfg.name), "root": None if cfg.get("root") is None else str(cfg.root),
              "seed": int(args["seed"]) if cfg.name == "synthetic" else None}
    manifest = pack(packable, out, shard_bytes, workers, source)
    splits = ", ".join(f"{k} {v['count']:,} samples in {len(v['shards'])} shard(s)"
                       for k, v in manifest["splits"].items())
    print(f"packed data={cfg.name} into {out}: {splits}" + (f"; {len(packable.skipped)} bad file(s) left out"
                                                            if packable.skipped else ""))
    t = packable.describe
    extra = f" data.image_size={t['image_size']}" + (" data.channels=1" if packable.channels == 1 else "")
    if t["mean"] is not None:
        extra += f" 'data.mean={t['mean']}' 'data.std={t['std']}'"
    else:
        extra += " data.mean=null data.std=null"
    print(f"train with: python -m resexp data=shards data.root={out}{extra}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    run_command(main)
