"""Augmentation, two ways.

Batched (the in-memory path): whole-batch tensor operations on the training device, their random
numbers drawn on the CPU from a generator seeded by (seed, epoch, rank, batch) so a batch is the same
on every device and after a mid-epoch resume:
- random crop with zero padding + horizontal flip: one pad and two gathers per batch, per-sample offsets;
- random resized crop: one affine grid_sample per batch (scale (0.08, 1), ratio (3/4, 4/3));
- random erasing: a per-sample rectangle mask (area (0.02, 0.33), ratio (0.3, 3.3), value 0 after
  normalisation; a rectangle that does not fit is clamped to the image instead of re-drawn);
- TrivialAugmentWide / RandAugment: torchvision's op spaces re-implemented for whole batches
  (batched_policy): each image draws its own op and magnitude, images with the same op go together.

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


# The op spaces of torchvision's TrivialAugmentWide and RandAugment (v2): name -> (magnitude bins
# as a function of (num_bins, height, width), or None; whether the sign is random).
def _up_to(top: float):
    return lambda n, h, w: torch.linspace(0.0, top, n)


def _posterize(steps: int):
    return lambda n, h, w: (8 - (torch.arange(n) / ((n - 1) / steps))).round()


_WIDE = {  # in torchvision's order: an op's index is what the random draw picks
    "Identity": (None, False),
    "ShearX": (_up_to(0.99), True),
    "ShearY": (_up_to(0.99), True),
    "TranslateX": (_up_to(32.0), True),
    "TranslateY": (_up_to(32.0), True),
    "Rotate": (_up_to(135.0), True),
    "Brightness": (_up_to(0.99), True),
    "Color": (_up_to(0.99), True),
    "Contrast": (_up_to(0.99), True),
    "Sharpness": (_up_to(0.99), True),
    "Posterize": (_posterize(6), False),
    "Solarize": (lambda n, h, w: torch.linspace(1.0, 0.0, n), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
}
_RAND = {  # RandAugment's magnitudes for the same ops (dict update: the order stays)
    **_WIDE,
    "ShearX": (_up_to(0.3), True),
    "ShearY": (_up_to(0.3), True),
    "TranslateX": (lambda n, h, w: torch.linspace(0.0, 150.0 / 331.0 * w, n), True),
    "TranslateY": (lambda n, h, w: torch.linspace(0.0, 150.0 / 331.0 * h, n), True),
    "Rotate": (_up_to(30.0), True),
    "Brightness": (_up_to(0.9), True),
    "Color": (_up_to(0.9), True),
    "Contrast": (_up_to(0.9), True),
    "Sharpness": (_up_to(0.9), True),
    "Posterize": (_posterize(4), False),
}
_OPS = list(_WIDE)
_BINS = 31


def batched_policy(x: Tensor, name: str, g: torch.Generator) -> Tensor:
    """TrivialAugmentWide (one op per image, random magnitude bin) or RandAugment (two ops per image,
    magnitude bin 9 of 31) on a uint8 batch, as whole-batch operations: every image draws its own op,
    magnitude and sign exactly as torchvision's v2 transforms do, and the images that drew the same op
    are transformed together. Same op space, magnitudes, nearest interpolation and zero fill as
    torchvision; geometric ops are resampled here, so pixels may differ from torchvision's by rounding."""
    space, rounds = (_WIDE, 1) if name == "trivialaugment" else (_RAND, 2)
    b, _, h, w = x.shape
    for _ in range(rounds):
        op = torch.randint(len(_OPS), (b,), generator=g)
        if name == "trivialaugment":
            level = torch.randint(_BINS, (b,), generator=g)
        else:
            level = torch.full((b,), 9)
        flip_sign = torch.rand(b, generator=g) <= 0.5
        mags = torch.zeros(b)
        for k, op_name in enumerate(_OPS):
            fn, signed = space[op_name]
            sel = op == k
            if fn is not None and bool(sel.any()):
                m = fn(_BINS, h, w).float()[level[sel]]
                mags[sel] = torch.where(flip_sign[sel], -m, m) if signed else m
        x = apply_ops(x, op, mags)
    return x


def apply_ops(x: Tensor, op: Tensor, mags: Tensor) -> Tensor:
    """Image i gets op _OPS[op[i]] with magnitude mags[i] (CPU tensors); uint8 NCHW in and out."""
    out = x.clone()
    for k, name in enumerate(_OPS):
        sel = torch.nonzero(op == k).flatten()
        if name == "Identity" or len(sel) == 0:
            continue
        idx = sel.to(x.device, non_blocking=True)
        out[idx] = _op(name, x[idx], mags[sel])
    return out


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (a * f + b * (1.0 - f)).clamp_(0, 255).to(torch.uint8)


def _gray(xf: Tensor) -> Tensor:
    if xf.shape[1] == 1:
        return xf
    return (0.2989 * xf[:, 0:1] + 0.587 * xf[:, 1:2] + 0.114 * xf[:, 2:3]).floor_()


def _warp(x: Tensor, inv: Tensor) -> Tensor:
    """Resample each image through its inverse affine map (output pixel -> source, pixel units with
    pixel centres at +0.5), nearest neighbour, zeros outside."""
    n, c, h, w = x.shape
    dev = x.device
    ys, xs = torch.meshgrid(torch.arange(h, device=dev) + 0.5, torch.arange(w, device=dev) + 0.5, indexing="ij")
    base = torch.stack([xs.flatten(), ys.flatten(), torch.ones(h * w, device=dev)])  # [3, h*w]
    src = inv.to(dev, torch.float32) @ base  # [n, 2, h*w]
    grid = torch.stack([src[:, 0] / w * 2 - 1, src[:, 1] / h * 2 - 1], -1).view(n, h, w, 2)
    y = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return y.round_().to(torch.uint8)


def _op(name: str, x: Tensor, m: Tensor) -> Tensor:
    n, c, h, w = x.shape
    dev = x.device
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        inv = torch.zeros(n, 2, 3, dtype=torch.float64)
        inv[:, 0, 0] = inv[:, 1, 1] = 1.0
        md = m.double()
        if name == "ShearX":  # about the top-left corner, as torchvision
            inv[:, 0, 1] = md
        elif name == "ShearY":
            inv[:, 1, 0] = md
        elif name == "TranslateX":
            inv[:, 0, 2] = -md.trunc()
        elif name == "TranslateY":
            inv[:, 1, 2] = -md.trunc()
        else:  # Rotate about the centre
            t = -torch.deg2rad(md)  # positive = counter-clockwise, as torchvision
            cos, sin = t.cos(), t.sin()
            cx, cy = w / 2.0, h / 2.0
            inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 0], inv[:, 1, 1] = cos, sin, -sin, cos
            inv[:, 0, 2] = cx - cos * cx - sin * cy
            inv[:, 1, 2] = cy + sin * cx - cos * cy
        return _warp(x, inv)
    f = (1.0 + m).to(dev, torch.float32)
    xf = x.float()
    if name == "Brightness":
        return _blend(xf, torch.zeros_like(xf), f)
    if name == "Color":
        return _blend(xf, _gray(xf), f) if c == 3 else x
    if name == "Contrast":
        mean = _gray(xf).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(xf, mean, f)
    if name == "Sharpness":
        k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=dev) / 13.0
        blurred = F.conv2d(xf, k.expand(c, 1, 3, 3), groups=c).round_()
        degenerate = xf.clone()
        degenerate[..., 1:-1, 1:-1] = blurred
        return _blend(xf, degenerate, f)
    if name == "Posterize":
        bits = m.round().long().clamp(0, 8)
        mask = ((0xFF << (8 - bits)) & 0xFF).to(torch.uint8).to(dev).view(-1, 1, 1, 1)
        return x & mask
    if name == "Solarize":
        t = (255.0 * m).to(dev, torch.float32).view(-1, 1, 1, 1)
        return torch.where(xf >= t, 255 - x, x)
    if name == "AutoContrast":
        lo = xf.amin(dim=(2, 3), keepdim=True)
        hi = xf.amax(dim=(2, 3), keepdim=True)
        flat = hi <= lo
        scale = torch.where(flat, torch.ones_like(hi), 255.0 / (hi - lo).clamp_min(1e-6))
        lo = torch.where(flat, torch.zeros_like(lo), lo)
        return ((xf - lo) * scale).clamp_(0, 255).to(torch.uint8)
    if name == "Equalize":
        import torchvision.transforms.v2.functional as TF

        return TF.equalize(x)
    raise ValueError(f"unknown op {name}")


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


def eval_tensor(x: Tensor, size: int) -> Tensor:
    """The eval path's geometry on a uint8 [C, H, W] tensor (data.decode=torchvision / device)."""
    import torchvision.transforms.v2.functional as TF

    return TF.center_crop(TF.resize(x, size, antialias=True), size)


def eval_uint8(img, size: int) -> Tensor:
    """The eval path's geometry on a PIL image, as uint8 [C, size, size] (no normalisation)."""
    import torchvision.transforms.v2 as v2

    t = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor(), v2.ToPureTensor()])
    return t(img)
