"""The streaming path: files decoded by DataLoader workers with torchvision.transforms.v2.

A batch sampler (in the main process) decides the order: the same permutation and sharding as the
in-memory path, from (seed, epoch). Each sample carries its own seed, mix(seed, epoch, index), and
its transform runs under that seed, so augmentation does not depend on the number of workers, the
batch size or the rank that sees it, and set_epoch(e, start_batch=k) reproduces batches k.. exactly.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from resexp.data.augment import seeded_call
from resexp.data.common import check_rank, epoch_order, eval_count, mix_seed, train_count
from resexp.data.images import decode_tensor, open_image
from resexp.errors import DataError


class _Seeded(Dataset):
    transform: Callable

    def _apply(self, x, sample_seed: int | None):
        if sample_seed is None:
            return self.transform(x)
        return seeded_call(self.transform, x, sample_seed)


class FileDataset(_Seeded):
    """(path, label) pairs -> (transformed image, label); keys are (index, sample seed or None)."""

    def __init__(self, items: list[tuple[Path, int]], transform: Callable, channels: int,
                 draft: tuple[int, int] | None = None, tensors: bool = False):
        self.items, self.transform, self.channels, self.draft = items, transform, channels, draft
        self.tensors = tensors  # data.decode=torchvision: uint8 tensors (decode_jpeg) for tensor transforms

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int | None]):
        i, sample_seed = key
        path, label = self.items[i]
        try:
            if self.tensors:
                with open(path, "rb") as f:
                    img = decode_tensor(f.read(), self.channels)
            else:
                img = open_image(path, self.channels, self.draft)
        except Exception as e:  # noqa: BLE001
            raise DataError(
                f"cannot read image {path} ({type(e).__name__}: {e}); it passed the start-up check, so it "
                "changed since: restore it, or delete it and restart"
            ) from None
        return self._apply(img, sample_seed), label


class ShardDataset(_Seeded):
    """Samples of a packed split (data=shards) -> (transformed image, label), keys as FileDataset's."""

    def __init__(self, part, transform: Callable, channels: int, draft: tuple[int, int] | None = None,
                 tensors: bool = False):
        self.reader, self.indices, self.labels = part.reader, part.indices, part.labels
        self.transform, self.channels, self.draft, self.tensors = transform, channels, draft, tensors

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int | None]):
        i, sample_seed = key
        j = int(self.indices[i])
        blob = self.reader.read(j)
        try:
            img = decode_tensor(blob, self.channels) if self.tensors else open_image(io.BytesIO(blob), self.channels,
                                                                                      self.draft)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot decode sample {j} of {self.reader.split.shards[int(self.reader.split.shard[j])]} "
                            f"({type(e).__name__}: {e}): the shard is damaged; restore it or pack again") from None
        return self._apply(img, sample_seed), int(self.labels[i])


class TensorDataset(_Seeded):
    """uint8 NCHW images held in memory, transformed per sample (an in-memory set on the stream path)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int | None]):
        i, sample_seed = key
        return self._apply(self.images[i], sample_seed), int(self.labels[i])


class ShardedBatchSampler(Sampler[list[tuple[int, int | None]]]):
    """Batches of (index, sample seed) for one rank; see common.epoch_order for the rules."""

    def __init__(self, n: int, *, batch_size: int, train: bool, shuffle: bool, seed: int, rank: int,
                 world_size: int):
        check_rank(rank, world_size)
        self.n, self.batch_size, self.train, self.shuffle = n, batch_size, train, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_samples = train_count(n, world_size, batch_size) if train else eval_count(n, rank, world_size)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if start_batch < 0:
            raise ValueError(f"start_batch={start_batch} must be >= 0")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        order = epoch_order(self.n, train=self.train, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                            rank=self.rank, world_size=self.world_size, batch_size=self.batch_size).tolist()
        bs = self.batch_size
        for b in range(self.start_batch, len(self)):
            chunk = order[b * bs : (b + 1) * bs]
            if self.train:
                yield [(i, mix_seed(self.seed, self.epoch, i)) for i in chunk]
            else:
                yield [(i, None) for i in chunk]


def _worker_init(seed: int) -> Callable[[int], None]:
    return _WorkerInit(seed)


class _WorkerInit:
    """Seeds Python's and NumPy's generators per worker (the transforms themselves are seeded per sample)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        s = mix_seed(self.seed, "worker", worker_id)
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.set_num_threads(1)


class StreamLoader:
    """A torch DataLoader with a seeded, sharded batch sampler; yields CPU tensors (pinned for CUDA)."""

    def __init__(self, dataset: Dataset, *, batch_size: int, train: bool, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, pin_memory: bool = False,
                 collate_fn: Callable | None = None):
        self.sampler = ShardedBatchSampler(len(dataset), batch_size=batch_size, train=train, shuffle=shuffle,
                                           seed=seed, rank=rank, world_size=world_size)
        if train and self.sampler.num_samples < 1:
            raise DataError(
                f"the training split has {len(dataset)} sample(s): too few for world_size={world_size} "
                "(each rank needs at least 2)"
            )
        self.batch_size = int(batch_size)
        self.num_samples = self.sampler.num_samples
        self.dataset = dataset
        workers = max(0, int(num_workers))
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init(seed) if workers > 0 else None,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(mix_seed(seed, "loader")),
            collate_fn=collate_fn,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        try:
            yield from self.loader
        except DataError as e:
            self.close()
            # a worker's DataError arrives wrapped in its traceback text: keep the one-line message
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            if len(lines) > 1:
                raise DataError(lines[-1].split("DataError: ", 1)[-1]) from None
            raise

    def close(self) -> None:
        """Stop the persistent worker processes now (they are restarted by the next iteration)."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None
