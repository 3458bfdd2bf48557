"""The data sets that need no files: scikit-learn's 8x8 digits (shipped inside the package) and
generated synthetic images. Both load into memory (ArraySource)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from resexp.data.common import check_num_classes, generator
from resexp.data.sources import fit_images, need_val_split, set_info, split_arrays
from resexp.data.types import ArraySource, DataInfo
from resexp.errors import ConfigError

Arrays = dict[str, tuple[torch.Tensor, torch.Tensor]]  # split name -> (uint8 NCHW, int64 labels)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images 1797x8x8 float, targets 1797 int) as sklearn.datasets.load_digits gives them, read from
    the CSV file scikit-learn ships, found without importing sklearn.datasets (2 s of the default job's
    start-up); load_digits itself if the file is not where it has always been."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


class Digits:
    """scikit-learn's 1,797 8x8 digits (shipped with the package: offline), upscaled once at load."""

    name = "digits"
    native_channels = 1

    def describe(self, cfg: DictConfig) -> DataInfo:
        check_num_classes(cfg, 10, "data=digits")
        return set_info(cfg, 10, cfg.channels or self.native_channels, [str(i) for i in range(10)])

    def arrays(self, cfg: DictConfig, seed: int) -> Arrays:
        """The published split(s) at the set's own size and channels (what the packer stores)."""
        images, target = load_digits_arrays()
        x = torch.from_numpy(images).mul(255.0 / 16.0).round_().clamp_(0, 255).to(torch.uint8).unsqueeze(1)
        return {"train": (x, torch.from_numpy(target).to(torch.int64))}

    def load(self, cfg: DictConfig, seed: int) -> ArraySource:
        info = self.describe(cfg)
        need_val_split(cfg, self.name)
        x, y = self.arrays(cfg, seed)["train"]
        x = fit_images(x, cfg, info.in_channels)
        train, val, split = split_arrays(x, y, cfg, seed, "sklearn.datasets.load_digits")
        return ArraySource(info, train, val, None, split)


class Synthetic:
    """Learnable generated images: per class a random low-frequency template, per sample noise and
    a brightness/contrast jitter. Any size, channels, classes; a pure function of the seed."""

    name = "synthetic"
    native_channels = 3

    def describe(self, cfg: DictConfig) -> DataInfo:
        k = cfg.num_classes or 10
        return set_info(cfg, k, cfg.channels or self.native_channels, [f"class_{i}" for i in range(k)])

    def arrays(self, cfg: DictConfig, seed: int) -> Arrays:
        info = self.describe(cfg)
        n, k, c, s = int(cfg.num_samples), info.num_classes, info.in_channels, int(cfg.image_size)
        if n < 2 * k:
            raise ConfigError(f"data.num_samples={n} is too few for {k} classes: give at least {2 * k}")
        g = generator(seed, "synthetic")
        low = torch.randn(k, c, 4, 4, generator=g)
        templates = torch.nn.functional.interpolate(low, size=(s, s), mode="bicubic", align_corners=False)
        templates = templates / templates.flatten(1).std(1).view(k, 1, 1, 1) * 45.0
        y = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
        x = torch.empty(n, c, s, s, dtype=torch.uint8)
        chunk = 8192
        for i in range(0, n, chunk):
            yi = y[i : i + chunk]
            m = len(yi)
            contrast = torch.empty(m, 1, 1, 1).uniform_(0.7, 1.3, generator=g)
            bright = torch.empty(m, 1, 1, 1).uniform_(-20, 20, generator=g)
            noise = torch.randn(m, c, s, s, generator=g).mul_(35.0)
            img = templates[yi].mul_(contrast).add_(bright).add_(noise).add_(128.0)
            x[i : i + chunk] = img.round_().clamp_(0, 255).to(torch.uint8)
        return {"train": (x, y)}

    def load(self, cfg: DictConfig, seed: int) -> ArraySource:
        info = self.describe(cfg)
        need_val_split(cfg, self.name)
        x, y = self.arrays(cfg, seed)["train"]
        train, val, split = split_arrays(x, y, cfg, seed, f"synthetic(seed={seed})")
        return ArraySource(info, train, val, None, split)
