"""Data-path throughput: resexp's in-memory loader against a torchvision DataLoader, and image folders.

    python benchmarks/bench_data.py                 # the figures recorded in benchmarks/RESULTS.md
    python benchmarks/bench_data.py --device cuda   # the in-memory path on a GPU as well

1. CIFAR-shaped data (N uint8 32x32x3 images), CIFAR augmentation (random crop 32 with padding 4,
   horizontal flip, normalise), batch 256, images/second over whole epochs after a warm-up epoch:
   - resexp memory path (resexp.data.memory.MemoryLoader), on the CPU (and --device); also with
     TrivialAugmentWide added (its batched re-implementation);
   - torch DataLoader over the same images as PIL with transforms.RandomCrop(32, padding=4),
     RandomHorizontalFlip, ToTensor, Normalize; 0 and 2 workers (persistent).
2. Image folder: M 224x224 JPEGs written to a temporary folder; the start-up check, then the streaming
   path (decode + resize + to float + normalise) with 0 and 2 workers, eval and train (random resized
   crop + flip), and the memory path (decoded once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from bench_common import cpu_name  # noqa: E402 (this script's folder is on sys.path)
from omegaconf import OmegaConf  # noqa: E402

from resexp.data import build_data  # noqa: E402
from resexp.data.memory import MemoryLoader  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def epochs_per_second(loader, n_images: int, epochs: int, sync=None) -> float:
    """Median images/s over `epochs` full epochs, after one warm-up epoch."""
    rates = []
    for e in range(epochs + 1):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(e)
        t = time.perf_counter()
        seen = 0
        for x, _ in loader:
            seen += x.shape[0]
        if sync:
            sync()
        dt = time.perf_counter() - t
        if e > 0:
            rates.append(seen / dt)
    return statistics.median(rates)


def bench_memory(x: torch.Tensor, y: torch.Tensor, device: str, epochs: int, policy: str = "none") -> float:
    aug = OmegaConf.create({"crop_padding": 4, "flip": True, "random_resized_crop": False, "policy": policy,
                            "random_erasing": 0.0})
    loader = MemoryLoader(x.to(device), y.to(device), batch_size=256, train=True, image_size=32, mean=MEAN,
                          std=STD, augment_cfg=aug, seed=0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    return epochs_per_second(loader, len(x), epochs, sync)


class PILSet(torch.utils.data.Dataset):
    def __init__(self, hwc: np.ndarray, labels: np.ndarray):
        import torchvision.transforms as T

        self.hwc, self.labels = hwc, labels
        self.t = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                            T.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.hwc)

    def __getitem__(self, i):
        from PIL import Image

        return self.t(Image.fromarray(self.hwc[i])), int(self.labels[i])


def bench_dataloader(x: torch.Tensor, y: torch.Tensor, workers: int, epochs: int) -> float:
    ds = PILSet(x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy())
    loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    return epochs_per_second(loader, len(x), epochs)


def write_jpegs(root: Path, n: int, classes: int = 4, size: int = 224) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        c = i % classes
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(1, 6, 3)
        img = np.stack([np.sin(2 * np.pi * (f[k] * xx + (k + c) * yy)) for k in range(3)], -1) * 80 + 128
        img += rng.normal(0, 12, img.shape)  # photo-like: smooth structure plus sensor noise
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)


def bench_folder(n: int, epochs: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        write_jpegs(root, n)
        base = OmegaConf.load(ROOT / "conf" / "data" / "image_folder.yaml")
        base = OmegaConf.merge(base, {"root": str(root), "batch_size": 32, "val_split": 0.5})
        t = time.perf_counter()
        build_data(OmegaConf.merge(base, {"num_workers": 0}), seed=0)
        out["start-up (list + decode check of every file)"] = n / (time.perf_counter() - t)
        for workers in (0, 2):
            cfg = OmegaConf.merge(base, {"num_workers": workers})
            b = build_data(cfg, seed=0)
            out[f"stream eval, decode+resize+normalise, {workers} workers"] = epochs_per_second(
                b.val, b.val.num_samples, epochs)
            cfg = OmegaConf.merge(cfg, {"augment": {"random_resized_crop": True, "flip": True}})
            b = build_data(cfg, seed=0)
            out[f"stream train, + random resized crop + flip, {workers} workers"] = epochs_per_second(
                b.train, b.train.num_samples, epochs)
        cfg = OmegaConf.merge(base, {"loader": "memory", "augment": {"random_resized_crop": True, "flip": True}})
        t = time.perf_counter()
        b = build_data(cfg, seed=0)
        out["memory: decode once at start-up (check + decode)"] = n / (time.perf_counter() - t)
        out["memory train, random resized crop + flip (batched)"] = epochs_per_second(
            b.train, b.train.num_samples, epochs)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="CIFAR-shaped images")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--folder-n", type=int, default=256, help="224x224 JPEGs in the image-folder test")
    p.add_argument("--device", default=None, help="also time the memory path on this device (e.g. cuda)")
    p.add_argument("--no-folder", action="store_true", help="skip the image-folder part")
    return p


def main() -> None:
    args = parser().parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# {cpu_name()}, {cores} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"# command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (args.n,), generator=g)

    rows = [("resexp memory path, cpu", bench_memory(x, y, "cpu", args.epochs))]
    devices = ["cpu"] + ([args.device] if args.device and args.device != "cpu" else [])
    if len(devices) > 1:
        rows.append((f"resexp memory path, {args.device}", bench_memory(x, y, args.device, args.epochs)))
    extra = [(f"resexp memory path + TrivialAugmentWide (batched), {d}",
              bench_memory(x, y, d, args.epochs, "trivialaugment")) for d in devices]
    for w in (0, 2):
        rows.append((f"DataLoader + PIL transforms, {w} workers", bench_dataloader(x, y, w, args.epochs)))
    print(f"\n## CIFAR-shaped: {args.n} images 32x32x3, crop pad 4 + flip + normalise, batch 256")
    print("| loader | images/s |\n|---|---:|")
    for name, rate in rows + extra:
        print(f"| {name} | {rate:,.0f} |")
    mem, two = rows[0][1], rows[-1][1]
    print(f"\nratio memory (cpu) / DataLoader 2 workers: {mem / two:.1f}x (target >= 7x)")
    if len(devices) > 1:
        print(f"ratio memory ({args.device}) / DataLoader 2 workers: {rows[1][1] / two:.1f}x")

    if args.no_folder:
        return
    print(f"\n## Image folder: {args.folder_n} JPEGs 224x224 -> 224, batch 32")
    print("| path | images/s |\n|---|---:|")
    for name, rate in bench_folder(args.folder_n, args.epochs).items():
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
