"""data.decode=device: JPEGs decoded on the training device, a batch at a time.

DataLoader workers only read the encoded bytes (files or shard samples), in the streaming path's
seeded order. In the main process each batch is decoded on the training device (TorchCodec's
decode_jpeg when installed, else torchvision's: one batched nvJPEG call on CUDA; on a CPU-only
machine the same code decodes on the CPU), brought to the eval geometry (shorter side resized to
image_size, centre crop) on that device, and then augmented exactly as the in-memory path augments
(memory.BatchAugment: crop/flip, random resized crop, TrivialAugment/RandAugment, erasing,
normalise; random numbers from (seed, epoch, rank, batch)). So a batch equals the one
data.loader=memory gives (which decodes once at start-up into that geometry), with two differences:
JPEGs are decoded at full size (PIL decodes large ones at a reduced DCT scale, draft) and resized by
torch's antialiased bilinear instead of PIL's; for images already at image_size neither applies.
Files that are not JPEG are decoded by PIL on the CPU (same conversions as everywhere else), then
moved to the device.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from resexp.data.augment import eval_tensor
from resexp.data.images import open_image, pil_to_uint8
from resexp.data.memory import BatchAugment
from resexp.data.stream import StreamLoader
from resexp.data.types import ShardPart
from resexp.errors import DataError, error_line

JPEG_MAGIC = b"\xff\xd8\xff"


class BytesDataset(Dataset):
    """Sample i of a FileSource's [(path, label)] or of a ShardPart -> (its encoded bytes as a uint8
    tensor, label); keys (index, sample seed) as the other streaming datasets'."""

    def __init__(self, part):
        self.part = part
        self.labels = part.labels if isinstance(part, ShardPart) else [lab for _, lab in part]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int | None]):
        i = key[0]
        if isinstance(self.part, ShardPart):
            blob = self.part.reader.read(int(self.part.indices[i]))
        else:
            try:
                blob = Path(self.part[i][0]).read_bytes()
            except OSError as e:
                raise DataError(f"cannot read {self.part[i][0]} ({e.strerror or e}): it changed since the start-up "
                                "check; restore it, or delete it and restart") from None
        return torch.frombuffer(bytearray(blob), dtype=torch.uint8), int(self.labels[i])


def collate(batch):
    return [b for b, _ in batch], torch.tensor([lab for _, lab in batch], dtype=torch.int64)


@functools.cache
def jpeg_decoder() -> tuple[str, Callable]:
    """(name, decode(list of byte tensors, mode "RGB"/"GRAY", device) -> list of CHW uint8): TorchCodec's
    batched decode_jpeg when installed (the resexp[decode] extra; torchvision's image decoding is deprecated
    since 0.29 in its favour), else torchvision.io.decode_jpeg."""
    try:
        from torchcodec.decoders import decode_jpeg

        return "torchcodec", lambda xs, mode, device: decode_jpeg(xs, mode=mode, device=device)
    except Exception:  # noqa: BLE001 - absent, or built for another torch: torchvision decodes the same
        import torchvision.io as tio

        def tv(xs, mode, device):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return tio.decode_jpeg(xs, mode=getattr(tio.ImageReadMode, mode), device=device)

        return "torchvision", tv


def decode_batch(blobs: list[Tensor], device: torch.device, channels: int, size: int) -> Tensor:
    """Encoded images -> uint8 [B, C, size, size] on `device` (eval geometry per image)."""
    mode = "RGB" if channels == 3 else "GRAY"
    out: list[Tensor | None] = [None] * len(blobs)
    jpeg = [i for i, b in enumerate(blobs) if bytes(b[:3].tolist()) == JPEG_MAGIC]
    if jpeg:
        try:
            decoded = jpeg_decoder()[1]([blobs[i] for i in jpeg], mode, device)
        except RuntimeError as e:
            raise DataError(f"a JPEG in this batch does not decode ({error_line(e, name=False)}): the start-up check "
                            "passed it, so it changed since; restore it") from None
        for i, x in zip(jpeg, decoded, strict=True):
            out[i] = x
    for i in range(len(blobs)):
        if out[i] is None:
            img = open_image(io.BytesIO(blobs[i].numpy().tobytes()), channels)
            out[i] = pil_to_uint8(img).to(device, non_blocking=True)
    return torch.stack([eval_tensor(x, size) for x in out])


class DeviceDecodeLoader:
    """A StreamLoader of encoded bytes, decoded and augmented per batch on `device` (see module doc)."""

    def __init__(self, stream: StreamLoader, device: torch.device, channels: int, image_size: int, mean, std,
                 augment_cfg, seed: int, rank: int):
        self.stream, self.device, self.channels, self.image_size = stream, device, channels, image_size
        self.batch_size, self.num_samples = stream.batch_size, stream.num_samples
        self.augment = BatchAugment(device, channels, image_size, mean, std, augment_cfg, seed, rank)

    def __len__(self) -> int:
        return len(self.stream)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.stream.set_epoch(epoch, start_batch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        sampler = self.stream.sampler
        b = sampler.start_batch
        for blobs, y in self.stream:
            x = decode_batch(blobs, self.device, self.channels, self.image_size)
            yield self.augment(x, sampler.epoch, b), y.to(self.device, non_blocking=True)
            b += 1

    def close(self) -> None:
        self.stream.close()
