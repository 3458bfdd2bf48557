"""Data sets and loaders for resexp.

`build_data(cfg.data, device=..., seed=..., rank=..., world_size=...)` returns a DataBundle of train /
val / test loaders. Two loading paths, chosen by data.loader (auto picks per set):
- memory (resexp/data/memory.py): the split as one uint8 tensor on the training device, batches
  augmented on that device with whole-batch tensor operations (digits, synthetic, CIFAR, MNIST; and
  image folders with data.loader=memory, decoded once at start-up);
- stream (resexp/data/stream.py): a torch DataLoader decoding files in worker processes (image folders,
  and tar shards written by `python -m resexp.pack`: data=shards).
Both give the same schedule: train order and augmentation are a pure function of (seed, epoch), train
shards have equal sizes on every rank, eval shards cover every sample exactly once, and
set_epoch(epoch, start_batch) resumes mid-epoch on exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import functools

import torch
from PIL import Image
from torch import Tensor

from resexp.data.common import as_cfg, check_rank, is_missing, norm_stats
from resexp.data.folder_sets import Birds, ImageFolder, decode_files
from resexp.data.memory import MemoryLoader
from resexp.data.offline_sets import Digits, Synthetic
from resexp.data.shard_sets import Shards
from resexp.data.stream import FileDataset, ShardDataset, StreamLoader, TensorDataset
from resexp.data.torchvision_sets import TORCHVISION_SETS
from resexp.data.types import ArraySource, DataBundle, DataInfo, FileSource, Loader, ShardSource
from resexp.errors import ConfigError
from resexp.registry import Registry

__all__ = ["DATASETS", "DataBundle", "DataInfo", "Loader", "build_data", "describe", "preprocess_image"]

DATASETS: Registry = Registry("dataset")
DATASETS.register("digits")(Digits())
DATASETS.register("synthetic")(Synthetic())
for _tv in TORCHVISION_SETS:
    DATASETS.register(_tv.name)(_tv)
DATASETS.register("image_folder")(ImageFolder())
DATASETS.register("birds")(Birds())
DATASETS.register("shards")(Shards())


def _dataset(cfg):
    if is_missing(cfg, "name"):
        raise ConfigError(
            f"data.name is required: pick a data set with data=<name>, one of: {', '.join(DATASETS.list())}"
        )
    return DATASETS.get(cfg.name)


def describe(cfg) -> DataInfo:
    """Classes, channels, size and normalisation of a data set without loading it (image folders: the
    class folder names only are listed)."""
    cfg = as_cfg(cfg)
    return _dataset(cfg).describe(cfg)


def build_data(cfg, *, device: torch.device | str = "cpu", seed: int = 0, rank: int = 0,
               world_size: int = 1) -> DataBundle:
    """The data set named by cfg.name, split, with loaders for this rank. See the module docstring."""
    cfg = as_cfg(cfg)
    check_rank(rank, world_size)
    device = torch.device(device)
    source = _dataset(cfg).load(cfg, seed)
    path = cfg.loader
    if path == "auto":
        path = "memory" if isinstance(source, ArraySource) else "stream"
    if path == "memory" and isinstance(source, (FileSource, ShardSource)):
        source = decode_files(source, cfg, device)
    decoder = str(cfg.get("decode", "pil"))
    # (pil / torchvision: how the streaming path decodes; data.loader=memory decodes once, with PIL)
    if decoder == "device" and (path != "stream" or not isinstance(source, (FileSource, ShardSource))):
        raise ConfigError(f"data.decode=device decodes image files and shards while training; data={cfg.name} "
                          f"with data.loader={cfg.loader} has nothing to decode: pass data.decode=torchvision or pil")
    factory = _memory_loader if path == "memory" else _device_decode_loader if decoder == "device" else _stream_loader
    make = functools.partial(factory, cfg=cfg, info=source.info, device=device, source=source,
                             eval_bs=int(cfg.eval_batch_size or 2 * cfg.batch_size),
                             common=dict(seed=seed, rank=rank, world_size=world_size))
    train = make(source.train, True)
    val = make(source.val, False)
    test = None
    if source.test is not None:
        test = val if source.test is source.val else make(source.test, False)
    return DataBundle(info=source.info, train=train, val=val, test=test, split=source.split, skipped=source.skipped)


def _memory_loader(pair, train: bool, *, cfg, info, device, eval_bs, source, common):
    x, y = pair
    return MemoryLoader(x.to(device), y.to(device), batch_size=cfg.batch_size if train else eval_bs, train=train,
                        image_size=info.image_size, mean=info.mean, std=info.std, augment_cfg=cfg.augment,
                        shuffle=cfg.shuffle if train else False, **common)


def _device_decode_loader(part, train: bool, *, cfg, info, device, eval_bs, source, common):
    from resexp.data.device_decode import BytesDataset, DeviceDecodeLoader, collate

    stream = StreamLoader(BytesDataset(part), batch_size=cfg.batch_size if train else eval_bs, train=train,
                          shuffle=cfg.shuffle if train else False, num_workers=cfg.num_workers, pin_memory=False,
                          collate_fn=collate, **common)
    return DeviceDecodeLoader(stream, device, info.in_channels, info.image_size, info.mean, info.std,
                              cfg.augment if train else None, common["seed"], common["rank"])


def _stream_loader(part, train: bool, *, cfg, info, device, eval_bs, source, common):
    from resexp.data.augment import stream_transform

    pil = isinstance(source, (FileSource, ShardSource)) and str(cfg.get("decode", "pil")) == "pil"
    transform, draft = stream_transform(cfg, info.mean, info.std, train=train, pil=pil)
    if isinstance(source, FileSource):
        ds = FileDataset(part, transform, info.in_channels, draft, tensors=not pil)
    elif isinstance(source, ShardSource):
        ds = ShardDataset(part, transform, info.in_channels, draft, tensors=not pil)
    else:
        ds = TensorDataset(part[0], part[1], transform)
    return StreamLoader(ds, batch_size=cfg.batch_size if train else eval_bs, train=train,
                        shuffle=cfg.shuffle if train else False, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda" and torch.cuda.is_available(), **common)


def preprocess_image(image: Image.Image, cfg) -> Tensor:
    """One image as the evaluation path sees it: the set's channels, resized (shorter side) and centre
    cropped to image_size, to float in [0, 1], normalised. Returns float32 [C, H, W].

    Needs no data files (only the config: channels, image_size, mean, std), so it works where data.root
    is absent. Pass the image straight from Image.open, not yet loaded: it is then decoded exactly as the
    streaming path decodes files (a JPEG much larger than image_size at a reduced DCT scale), and the
    result matches the eval batches bit for bit; an image loaded beforehand differs only for such JPEGs.
    With data.decode=torchvision or device a JPEG's bytes are decoded as those paths decode them
    (decode_jpeg, tensor resize): bit for bit with torchvision's eval batches, to float rounding with
    the device path's."""
    import torchvision.transforms.v2 as v2

    from resexp.data.augment import eval_uint8
    from resexp.data.images import to_channels

    cfg = as_cfg(cfg)
    ds = _dataset(cfg)
    # no data files needed (data.root may be elsewhere); packed shards say theirs when they are there
    channels = cfg.channels or (ds.channels_for(cfg) if hasattr(ds, "channels_for") else ds.native_channels)
    mean, std = norm_stats(cfg, channels)
    s = int(cfg.image_size)
    if str(cfg.get("decode", "pil")) != "pil":  # as the torchvision and device paths decode
        from resexp.data.augment import eval_tensor
        from resexp.data.images import decode_tensor, pil_to_uint8

        blob = _jpeg_bytes(image)
        u8 = decode_tensor(blob, channels) if blob is not None else pil_to_uint8(to_channels(image, channels))
        x = eval_tensor(u8, s)
    else:
        if getattr(image, "tile", None) and hasattr(image, "draft"):
            image.draft("RGB" if channels == 3 else "L", (s, s))
        x = eval_uint8(to_channels(image, channels), s)
    x = v2.functional.to_dtype(x, torch.float32, scale=True)
    if mean is not None:
        x = v2.functional.normalize(x, list(mean), list(std))
    return x


def _jpeg_bytes(image: Image.Image) -> bytes | None:
    """The encoded bytes of a JPEG still open from its file (or file object), else None."""
    if image.format != "JPEG":
        return None
    if getattr(image, "filename", None):
        with open(image.filename, "rb") as f:
            return f.read()
    fp = getattr(image, "fp", None)
    if fp is None:
        return None
    fp.seek(0)
    return fp.read()
