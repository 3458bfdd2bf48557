"""The data package's value types: what a data set describes and what build_data hands the trainer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from torch import Tensor


@dataclass
class DataInfo:
    """What a model and a report need to know about a data set, known without loading it."""

    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: tuple[float, ...] | None  # per channel, as applied by the loaders; None: pixels in [0, 1]
    std: tuple[float, ...] | None


@runtime_checkable
class Loader(Protocol):
    """One split's batches, for one rank. Both the in-memory and the streaming loader implement it."""

    batch_size: int
    num_samples: int  # samples this rank sees per epoch

    def __len__(self) -> int: ...  # batches per epoch on this rank

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...


@dataclass
class DataBundle:
    info: DataInfo
    train: Loader
    val: Loader
    test: Loader | None
    split: dict | None  # image folders: {"seed", "class_names", "train": [paths], "val": [paths]}
    skipped: int = 0  # unreadable files left out at start-up (data.on_bad_file=skip)


@dataclass
class ArraySource:
    """A data set held as whole tensors: uint8 NCHW images and int64 labels, on the CPU."""

    info: DataInfo
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor] | None = None
    split: dict | None = None
    skipped: int = 0


@dataclass
class FileSource:
    """A data set held as image files: (path, label) pairs, decoded while training."""

    info: DataInfo
    root: Path
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    split: dict | None = None
    skipped: int = 0
    test: list[tuple[Path, int]] | None = field(default=None)


@dataclass
class ShardPart:
    """Some samples of a packed split: a reader for its tars and which of its samples (split indices)."""

    reader: object  # resexp.data.shard_format.ShardReader
    indices: np.ndarray  # int64

    @property
    def labels(self) -> np.ndarray:
        return self.reader.split.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class ShardSource:
    """A data set packed into tar shards (data=shards), decoded while training."""

    info: DataInfo
    root: Path
    train: ShardPart
    val: ShardPart
    test: ShardPart | None = None
    split: dict | None = None
    skipped: int = 0
