"""Image folder against shards, and the JPEG decoders, per core.

    python benchmarks/bench_shards.py [--n 512] [--epochs 2]
    python benchmarks/bench_shards.py --device cuda --skip-decoders --workers 4,8,16 --decodes pil,torchvision,device

1. Decoders, one thread, in memory (no file reads): 224x224 photo-like JPEGs (quality 90) and, for
   the resize cost, 500x375 ones (ImageNet's typical size) to 224: PIL (Image.open + draft + load, as
   resexp decodes), torchvision.io.decode_jpeg, TorchCodec's decode_jpeg (when installed); the
   eval geometry after decoding (resize shorter side + centre crop) on PIL images or uint8 tensors.
2. Loaders: the same n JPEGs as an image folder and packed into shards (python -m resexp.pack),
   image_size 224, batch 32, eval (decode + resize + centre crop + normalise) and train (+ random
   resized crop + flip), 0, 1 and 2 DataLoader workers, images/s after a warm-up epoch; PIL decoding
   (data.decode=pil, the default) and decode_jpeg + tensor transforms (data.decode=torchvision).
   With --device each batch is moved to that device (and data.decode=device decodes there); the clock
   stops after the device has finished (the rate a training loop on that device could be fed at).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_common import cpu_name  # noqa: E402
from bench_data import epochs_per_second, write_jpegs  # noqa: E402


def photo(w: int, h: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h)
    f = rng.uniform(1, 6, 3)
    img = np.stack([np.sin(2 * np.pi * (f[k] * xx + k * yy)) for k in range(3)], -1) * 80 + 128
    img += rng.normal(0, 12, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def rate(fn, items, repeat=3) -> float:
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        for it in items:
            fn(it)
        best = max(best, len(items) / (time.perf_counter() - t))
    return best


def decoders(n: int) -> list[tuple[str, float]]:
    import torchvision.io as tio
    import torchvision.transforms.v2 as v2

    from resexp.data.augment import eval_uint8
    from resexp.data.images import open_image, pil_to_uint8

    rows = []
    geo = v2.Compose([v2.Resize(224, antialias=True), v2.CenterCrop(224)])
    try:
        from torchcodec.decoders import decode_jpeg as tc_decode
    except Exception as e:  # noqa: BLE001
        tc_decode = None
        print(f"# TorchCodec not importable: {type(e).__name__}: {e}")
    for w, h in ((224, 224), (500, 375)):
        blobs = [photo(w, h, i) for i in range(n)]
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        tag = f"{w}x{h}"
        rows.append((f"{tag} PIL decode (resexp: open + draft + load)",
                     rate(lambda b: pil_to_uint8(open_image(io.BytesIO(b), 3, (224, 224))), blobs)))
        rows.append((f"{tag} torchvision.io.decode_jpeg", rate(tio.decode_jpeg, tensors)))
        if tc_decode is not None:
            rows.append((f"{tag} TorchCodec decode_jpeg", rate(tc_decode, blobs)))
        rows.append((f"{tag} PIL decode + eval geometry (PIL resize)",
                     rate(lambda b: eval_uint8(open_image(io.BytesIO(b), 3, (224, 224)), 224), blobs)))
        rows.append((f"{tag} decode_jpeg + eval geometry (tensor resize)",
                     rate(lambda t: geo(tio.decode_jpeg(t)), tensors)))
        if w != 224:  # what the decoders' outputs differ by after the eval geometry
            d = [(eval_uint8(open_image(io.BytesIO(b), 3, (224, 224)), 224).int()
                  - geo(tio.decode_jpeg(t)).int()).abs().float() for b, t in zip(blobs[:32], tensors[:32], strict=True)]
            print(f"# {tag}: PIL path vs decode_jpeg + tensor resize: mean |diff| "
                  f"{torch.stack(d).mean():.3f}, max {max(x.max().item() for x in d):.0f} (of 255)")
    return rows


def loaders(n: int, epochs: int, workers=(0, 1, 2), decodes=("pil", "torchvision"), device: str = "cpu",
            batch: int = 32, splits=("eval", "train")) -> list[tuple[str, float]]:
    from omegaconf import OmegaConf

    from resexp.data import build_data
    from resexp.pack import main as pack

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, packed = Path(tmp) / "imgs", Path(tmp) / "packed"
        write_jpegs(folder, n)
        t = time.perf_counter()
        pack([f"src={folder}", f"out={packed}", "shard_size=8MB"])
        rows.append(("pack (check + write, 2 threads)", n / (time.perf_counter() - t)))
        base = OmegaConf.load(ROOT / "conf" / "data" / "image_folder.yaml")
        base.pop("defaults")
        base = OmegaConf.merge(base, {"batch_size": batch, "val_split": 0.5})
        sync = torch.cuda.synchronize if device.startswith("cuda") else None
        for decode in decodes:
            for w in workers:
                for kind, root in (("folder", folder), ("shards", packed)):
                    cfg = OmegaConf.merge(base, {"name": "image_folder" if kind == "folder" else "shards",
                                                 "root": str(root), "num_workers": w, "decode": decode})
                    tag = f"{kind}, decode={decode}, {w} workers"
                    for split in splits:
                        aug = {"random_resized_crop": True, "flip": True} if split == "train" else {}
                        b = build_data(OmegaConf.merge(cfg, {"augment": aug}), seed=0, device=device)
                        loader = b.train if split == "train" else b.val
                        rows.append((f"{tag}, {split}",
                                     epochs_per_second(OnDevice(loader, device), loader.num_samples, epochs, sync)))
                        loader.close()
    return rows


class OnDevice:
    """Iterate a loader with each batch moved to `device`, as the trainer moves it (no-op when already there)."""

    def __init__(self, loader, device: str):
        self.loader, self.device = loader, torch.device(device)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",")]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--skip-loaders", action="store_true")
    ap.add_argument("--skip-decoders", action="store_true")
    ap.add_argument("--workers", type=ints, default=[0, 1, 2], help="DataLoader workers to try, e.g. 4,8,16")
    ap.add_argument("--decodes", default="pil,torchvision", help="data.decode values to try (pil,torchvision,device)")
    ap.add_argument("--device", default="cpu", help="move batches here (data.decode=device decodes here)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--splits", default="eval,train", help="eval (decode + resize + crop), train (+ augmentation)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return ap


def main() -> None:
    a = parser().parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("RESEXP_CACHE", tempfile.mkdtemp())
    print(f"# {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 intra-op thread, device {a.device}")
    rows = []
    if not a.skip_decoders:
        print("| decoder (one thread) | images/s |\n|---|---:|")
        for name, r in decoders(min(a.n, 256)):
            rows.append({"case": name, "img_s": round(r)})
            print(f"| {name} | {r:,.0f} |")
    if not a.skip_loaders:
        print(f"\n| loader (224x224 JPEGs -> 224, batch {a.batch}, to {a.device}) | images/s |\n|---|---:|")
        for name, r in loaders(a.n, a.epochs, a.workers, a.decodes.split(","), a.device, a.batch,
                                  a.splits.split(",")):
            rows.append({"case": name, "img_s": round(r)})
            print(f"| {name} | {r:,.0f} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
