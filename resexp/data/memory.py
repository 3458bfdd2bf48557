"""The in-memory path: a whole split as one uint8 NCHW tensor on the training device.

Per batch everything happens on that device, as whole-batch tensor operations: index with the epoch's
permutation, crop/flip by gathering, optional resized crop / resize, TrivialAugmentWide / RandAugment
(batched re-implementations, see augment.batched_policy), to float, normalise, erase.
The random numbers for batch b of epoch e come from a CPU generator seeded by (seed, epoch, rank, b):
the batches are the same on the CPU and on a GPU, and set_epoch(e, start_batch=k) reproduces batches
k.. of the full epoch exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from resexp.data import augment
from resexp.data.common import check_rank, epoch_order, eval_count, generator, train_count
from resexp.errors import DataError


class MemoryLoader:
    """Batches of (float32 NCHW normalised images, int64 labels), already on the data's device."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        train: bool,
        image_size: int,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
        augment_cfg: DictConfig | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        check_rank(rank, world_size)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"images must be uint8 NCHW, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.to(images.device, torch.int64)
        self.device = images.device
        self.batch_size = int(batch_size)
        self.train, self.shuffle = train, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.image_size = image_size
        n = len(images)
        if train:
            self.num_samples = train_count(n, world_size, self.batch_size)
            if self.num_samples < 1:
                raise DataError(
                    f"the training split has {n} sample(s): too few for world_size={world_size} "
                    "(each rank needs at least 2)"
                )
        else:
            self.num_samples = eval_count(n, rank, world_size)
        self.epoch, self.start_batch = 0, 0
        self.augment = BatchAugment(self.device, images.shape[1], image_size, mean, std,
                                    augment_cfg if train else None, seed, rank)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Order and augmentation are a pure function of (seed, epoch); skip the first start_batch batches."""
        if start_batch < 0:
            raise ValueError(f"start_batch={start_batch} must be >= 0")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def _order(self) -> Tensor:
        return epoch_order(
            len(self.images), train=self.train, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
            rank=self.rank, world_size=self.world_size, batch_size=self.batch_size,
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        contiguous = not self.train or not self.shuffle
        if contiguous and self.world_size == 1:
            order = None  # slices are views: no gather at all
        else:
            order = order.to(self.device, non_blocking=True)
        bs = self.batch_size
        for b in range(self.start_batch, len(self)):
            lo, hi = b * bs, min((b + 1) * bs, self.num_samples)
            if order is None:
                x, y = self.images[lo:hi], self.labels[lo:hi].clone()
            else:
                idx = order[lo:hi]
                x, y = self.images[idx], self.labels[idx]
            yield self.augment(x, self.epoch, b), y


class BatchAugment:
    """A uint8 NCHW batch -> float32 normalised, augmented as data.augment says (None: evaluation),
    on the batch's device. Batch b of epoch e draws from a CPU generator seeded by (seed, e, rank, b)."""

    def __init__(self, device: torch.device, channels: int, image_size: int, mean, std,
                 augment_cfg: DictConfig | None, seed: int, rank: int):
        c = channels
        if mean is None:
            scale, shift = torch.full((c,), 1 / 255.0), torch.zeros(c)
        else:
            m, s = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
            scale, shift = (1.0 / (255.0 * s)).float(), (-m / s).float()
        self._scale = scale.view(1, c, 1, 1).to(device)
        self._shift = shift.view(1, c, 1, 1).to(device)
        a = augment_cfg
        self.seed, self.rank, self.image_size = seed, rank, image_size
        self._padding = int(a.crop_padding) if a is not None else 0
        self._flip = bool(a.flip) if a is not None else False
        self._rrc = bool(a.random_resized_crop) if a is not None else False
        self._erasing = float(a.random_erasing) if a is not None else 0.0
        self._policy = a.policy if a is not None and a.policy != "none" else None
        if self._policy is not None:
            augment.policy_transform(self._policy)  # an unknown name fails here, listing the choices
        self._random = self._padding > 0 or self._flip or self._rrc or self._erasing > 0 or self._policy is not None

    def __call__(self, x: Tensor, epoch: int, b: int) -> Tensor:
        g = generator(self.seed, epoch, self.rank, b) if self._random else None
        if self._padding or self._flip:
            x = augment.crop_flip(x, self._padding, self._flip, g)
        if self._rrc:
            x = augment.random_resized_crop(x, self.image_size, g)
        elif tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            shrink = self.image_size < max(x.shape[-2:])
            x = F.interpolate(x.float(), size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=shrink)
        if self._policy is not None:
            if x.dtype != torch.uint8:
                x = x.round_().clamp_(0, 255).to(torch.uint8)
            x = augment.batched_policy(x, self._policy, g)
        x = (x.float() if x.dtype == torch.uint8 else x).mul_(self._scale).add_(self._shift)
        if self._erasing > 0:
            x = augment.random_erasing(x, self._erasing, g)
        return x
