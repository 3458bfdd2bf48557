"""What every data set uses to turn its images into an ArraySource or FileSource: its DataInfo from
the config, images fitted to the configured channels and size, and the seeded validation split."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from resexp.data.common import convert_channels, norm_stats, resize_uint8, stratified_split
from resexp.data.types import DataInfo
from resexp.errors import ConfigError, DataError

RESIZE_AT_LOAD_LIMIT = 2 << 30  # bytes: larger resized sets are kept at their own size, resized per batch


def set_info(cfg: DictConfig, num_classes: int, channels: int, names: list[str]) -> DataInfo:
    mean, std = norm_stats(cfg, channels)
    return DataInfo(num_classes=num_classes, in_channels=channels, image_size=int(cfg.image_size),
                    class_names=list(names), mean=mean, std=std)


def fit_images(x: torch.Tensor, cfg: DictConfig, channels: int) -> torch.Tensor:
    """uint8 NCHW -> the configured channels, and resized to image_size when that stays small."""
    x = convert_channels(x, channels)
    s = cfg.image_size
    if x.shape[0] * channels * s * s <= RESIZE_AT_LOAD_LIMIT:
        x = resize_uint8(x, s)
    return x


def need_val_split(cfg: DictConfig, name: str) -> None:
    if cfg.val_split <= 0:
        raise ConfigError(
            f"data.val_split={cfg.val_split} leaves no validation data for data={name} (it has no separate "
            "test split): pass e.g. data.val_split=0.2"
        )


def check_val(n_val: int, n: int, cfg: DictConfig, what: str) -> None:
    if n_val == 0:
        raise DataError(
            f"the validation split of {what} is empty ({n} samples, data.val_split={cfg.val_split}, and every "
            "class keeps at least one training sample): raise data.val_split or add data"
        )


def split_arrays(x, y, cfg: DictConfig, seed: int, what: str):
    tr, va = stratified_split(y, cfg.val_split, seed)
    check_val(len(va), len(y), cfg, what)
    split = {"seed": seed, "val_split": float(cfg.val_split), "source": what, "val_indices": va.tolist()}
    return (x[tr], y[tr]), (x[va], y[va]), split
