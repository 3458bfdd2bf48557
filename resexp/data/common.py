"""Helpers shared by the data sets and both loading paths: the typed config, seeds, splits, tensors.
The config's bounds are its schema's (resexp/schemas.py DataConfig), checked by `as_cfg`."""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from resexp.config import typed
from resexp.errors import ConfigError, DataError

_M64 = (1 << 64) - 1


# ----------------------------------------------------------------------------------------- config
def as_cfg(cfg: Any) -> DictConfig:
    """The `data` config typed by its set's schema: defaults filled in, types, keys and bounds checked.

    Accepts the `data` node of a composed run config, a plain dict or None-free mapping. Interpolations
    are resolved first (they may point outside the `data` node); a missing required value (`???`) stays
    missing, so the caller can say which key is required.
    """
    if isinstance(cfg, DictConfig):
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    elif isinstance(cfg, dict):
        plain = cfg
    else:
        raise ConfigError(f"the data config must be a mapping (the `data` node), not {type(cfg).__name__}")
    return typed("data", plain)  # the schema of the set it names (resexp/schemas.py)


def is_missing(cfg: DictConfig, key: str) -> bool:
    return OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, "")


def check_num_classes(cfg: DictConfig, found: int, where: str, names: list[str] | None = None) -> None:
    if cfg.num_classes is not None and cfg.num_classes != found:
        shown = ""
        if names:
            shown = " (" + ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") + ")"
        raise DataError(
            f"data.num_classes={cfg.num_classes} but {where} has {found} classes{shown}: "
            f"pass data.num_classes={found}, or data.num_classes=null to take it from the data"
        )


def norm_stats(cfg: DictConfig, channels: int) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """data.mean / data.std as per-channel tuples (one value is repeated for every channel)."""
    mean, std = cfg.mean, cfg.std
    if mean is None:  # the schema: both or neither
        return None, None
    out = []
    for key, values in (("mean", list(mean)), ("std", list(std))):
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise ConfigError(
                f"data.{key} has {len(values)} values but the images have {channels} channel(s): "
                f"give 1 or {channels} value(s)"
            )
        out.append(tuple(float(v) for v in values))
    return out[0], out[1]


# ------------------------------------------------------------------------------------------ seeds
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of the parts (ints or strings), the same on every machine."""
    h = 0x243F6A8885A308D3
    for p in parts:
        if isinstance(p, str):
            p = zlib.crc32(p.encode())
        h = _splitmix64(h ^ (int(p) & _M64))
    return h & ((1 << 63) - 1)


def generator(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded from the parts (CPU streams are identical across machines and devices)."""
    return torch.Generator().manual_seed(mix_seed(*parts))


# ---------------------------------------------------------------------------------- epoch schedule
def epoch_order(
    n: int, *, train: bool, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int, batch_size: int
) -> Tensor:
    """This rank's sample indices for one epoch, in order, as a CPU int64 tensor.

    train: a permutation seeded by (seed, epoch), trimmed to a multiple of world_size, then every
    world_size-th from `rank`: all ranks get the same count and disjoint samples. A last batch of a
    single sample is dropped (BatchNorm cannot train on one sample).
    eval: rank::world_size of the stored order, no shuffle, no padding: the ranks cover every sample once.
    """
    if train:
        order = torch.randperm(n, generator=generator(seed, "epoch", epoch)) if shuffle else torch.arange(n)
        per_rank = n // world_size
        order = order[: per_rank * world_size][rank::world_size]
        if len(order) % batch_size == 1:
            order = order[:-1]
        return order
    return torch.arange(rank, n, world_size)


def train_count(n: int, world_size: int, batch_size: int) -> int:
    per_rank = n // world_size
    return per_rank - 1 if per_rank % batch_size == 1 else per_rank


def eval_count(n: int, rank: int, world_size: int) -> int:
    return len(range(rank, n, world_size))


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank} / world_size={world_size}: need 0 <= rank < world_size")


# ------------------------------------------------------------------------------------------ split
def stratified_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, val indices), both sorted: each class split in proportion, seeded by `seed`.

    The val total is round(N * val_fraction), shared out between classes by largest remainder, and
    every class keeps at least one training sample. Depends only on the labels' order and the seed.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n = len(labels)
    if val_fraction <= 0 or n == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.int64)
    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    exact = [int(c) * val_fraction for c in counts]
    quota = [math.floor(e) for e in exact]
    total = int(math.floor(n * val_fraction + 0.5))
    by_remainder = sorted(range(len(exact)), key=lambda k: (-(exact[k] - quota[k]), k))
    for k in by_remainder[: max(0, total - sum(quota))]:
        quota[k] += 1
    g = generator(seed, "split")
    train_parts, val_parts = [], []
    by_class = torch.argsort(labels, stable=True)  # each class's indices ascending, one sort for all classes
    ends = torch.cumsum(counts, 0).tolist()
    for k in range(len(classes)):
        members = by_class[ends[k] - int(counts[k]) : ends[k]]
        q = min(quota[k], max(0, len(members) - 1))
        perm = members[torch.randperm(len(members), generator=g)]
        val_parts.append(perm[:q])
        train_parts.append(perm[q:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


# ---------------------------------------------------------------------------------------- tensors
def convert_channels(x: Tensor, channels: int) -> Tensor:
    """uint8 NCHW with 1 or 3 channels -> `channels` (grey repeated, or ITU-R 601 luma like PIL's 'L')."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        w = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
        return ((x.to(torch.int32) * w).sum(1, keepdim=True) + 500).div(1000, rounding_mode="floor").to(torch.uint8)
    raise DataError(f"cannot convert {have}-channel images to {channels} channels")


def resize_uint8(x: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Bilinear resize of uint8 NCHW to size x size (antialiased when shrinking), in chunks."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < max(x.shape[-2:])
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8, device=x.device)
    for i in range(0, x.shape[0], chunk):
        y = F.interpolate(x[i : i + chunk].float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=shrink)
        out[i : i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
