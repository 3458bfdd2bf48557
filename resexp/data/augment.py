"""Augmentation, two ways.

Batched (the in-memory path): whole-batch tensor operations on the training device, their random
numbers drawn on the CPU from a generator seeded by (seed, epoch, rank, batch) so a batch is the same
on every device and after a mid-epoch resume:
- random crop with zero padding + horizontal flip: one pad and two gathers per batch, per-sample offsets;
- random resized crop: one affine grid_sample per batch (scale (0.08, 1), ratio (3/4, 4/3));
- random erasing: a per-sample rectangle mask (area (0.02, 0.33), ratio (0.3, 3.3), value 0 after
  normalisation; a rectangle that does not fit is clamped to the image instead of re-drawn);
- TrivialAugmentWide / RandAugment: torchvision's v2 transforms applied per sample on uint8 tensors
  (a Python loop over the batch: correct, but slower than the rest of this path).

Per-sample (the streaming path): torchvision.transforms.v2 pipelines on PIL images, built here
(torchvision is imported on first use: the in-memory path without a policy does not need it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from resexp.errors import ConfigError


def policy_transform(name: str):
    if name == "none":
        return None
    import torchvision.transforms.v2 as v2

    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "randaugment":
        return v2.RandAugment()
    raise ConfigError(f"data.augment.policy={name!r} is not one of: none, trivialaugment, randaugment")


# ------------------------------------------------------------------------------------------ batched
def crop_flip(x: Tensor, padding: int, flip: bool, g: torch.Generator) -> Tensor:
    """Random crop of each image to its own size after zero padding, and a random mirror; uint8 in/out."""
    b, c, h, w = x.shape
    dev = x.device
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    mirror = torch.rand(b, generator=g) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    if padding == 0:
        if not flip:
            return x
        m = mirror.to(dev, non_blocking=True).view(b, 1, 1, 1)
        return torch.where(m, x.flip(-1), x)
    cols_in = torch.arange(w)
    cols = torch.where(mirror[:, None], w - 1 - cols_in, cols_in) + ox[:, None]  # [b, w] into the padded image
    rows = oy[:, None] + torch.arange(h)  # [b, h]
    idx = torch.cat([rows, cols], 1).to(dev, non_blocking=True)
    rows, cols = idx[:, :h], idx[:, h:]
    xp = F.pad(x, (padding, padding, padding, padding))
    xp = xp.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * padding))
    return xp.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def random_resized_crop(x: Tensor, size: int, g: torch.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Tensor:
    """A random area/aspect crop of each image, resized to size x size (bilinear); float 0..255 out."""
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=g) * (h * w)
    logr = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = logr.exp()
    cw = (area * r).sqrt().clamp(1, w)
    ch = (area / r).sqrt().clamp(1, h)
    x0 = torch.rand(b, generator=g) * (w - cw)
    y0 = torch.rand(b, generator=g) * (h - ch)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw / w
    theta[:, 0, 2] = (2 * x0 + cw) / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (2 * y0 + ch) / h - 1
    theta = theta.to(x.device, non_blocking=True)
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_erasing(x: Tensor, p: float, g: torch.Generator,
                   scale=(0.02, 0.33), ratio=(0.3, 3.3), value: float = 0.0) -> Tensor:
    """Erase one random rectangle in each image with probability p (in place on a float batch)."""
    b, _, h, w = x.shape
    apply = torch.rand(b, generator=g) < p
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=g) * (h * w)
    r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g).exp()
    eh = (area * r).sqrt().round().clamp(1, h).long()
    ew = (area / r).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=g) * (h - eh + 1)).floor().long()
    x0 = (torch.rand(b, generator=g) * (w - ew + 1)).floor().long()
    rows = torch.arange(h)
    cols = torch.arange(w)
    rm = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None]) & apply[:, None]
    cm = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])
    mask = torch.cat([rm, cm], 1).to(x.device, non_blocking=True)
    mask = mask[:, :h, None] & mask[:, None, h:]
    return x.masked_fill_(mask[:, None], value)


def apply_policy(x: Tensor, policy, seed: int) -> Tensor:
    """A v2 policy (TrivialAugmentWide / RandAugment) per sample on uint8 NCHW, seeded (slow path)."""
    out = torch.empty_like(x)

    def each(batch):
        for i in range(batch.shape[0]):
            out[i] = policy(batch[i])

    seeded_call(each, x, seed)
    return out


def seeded_call(fn, x, seed: int):
    """fn(x) with torch's global CPU generator (what v2 transforms draw from) seeded, then restored.
    (torch.default_generator directly: torch.manual_seed costs ~1 ms a call.)"""
    g = torch.default_generator
    state = g.get_state()
    g.manual_seed(seed)
    try:
        return fn(x)
    finally:
        g.set_state(state)


# ------------------------------------------------------------------------------------- per sample
def stream_transform(cfg: DictConfig, mean, std, *, train: bool, pil: bool = True):
    """(transform, JPEG draft size or None) for the streaming path.

    eval: Resize(shorter side to image_size) + CenterCrop(image_size), to float, Normalize.
    train: RandomResizedCrop or that same resize, then RandomCrop(padding), flip, policy, erasing.
    pil=False builds the same on uint8 tensors (an in-memory set forced onto the streaming path).
    """
    import torchvision.transforms.v2 as v2

    size = cfg.image_size
    a = cfg.augment
    steps: list = []
    draft = None
    if train and a.random_resized_crop:
        steps.append(v2.RandomResizedCrop(size, antialias=True))
    else:
        steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        draft = (size, size) if pil else None
    if train:
        if a.crop_padding > 0:
            steps.append(v2.RandomCrop(size, padding=a.crop_padding))
        if a.flip:
            steps.append(v2.RandomHorizontalFlip())
        policy = policy_transform(a.policy)
        if policy is not None:
            steps.append(policy)
    if pil:
        steps.append(v2.PILToTensor())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    if train and a.random_erasing > 0:
        steps.append(v2.RandomErasing(p=a.random_erasing, value=0))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps), draft


def eval_uint8(img, size: int) -> Tensor:
    """The eval path's geometry on a PIL image, as uint8 [C, size, size] (no normalisation)."""
    import torchvision.transforms.v2 as v2

    t = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor(), v2.ToPureTensor()])
    return t(img)
