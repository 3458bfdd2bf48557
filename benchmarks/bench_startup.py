"""Start-up of an image folder: the bad-file check cold, cached, and after changing a few files.

    python benchmarks/bench_startup.py --make /tmp/folder200k --n 200000   # generate (once)
    python benchmarks/bench_startup.py /tmp/folder200k                     # measure

The folder: n small JPEGs (64x64, about 2 KB) in 100 class folders, written from 200 distinct
encoded images (decoding cost is per file; the bytes need not differ). Measured: the time of
build_data(data=image_folder) (listing, bad-file check, split, loaders) in this process with an empty
scan cache (cold), again (cached), and after rewriting `--change` files with other JPEG bytes.
The files stay in the OS page cache throughout (the machine's disk is not dropped between runs).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make(folder: Path, n: int, classes: int = 100) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(200):
        a = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=85)
        blobs.append(buf.getvalue())
    old = time.time() - 3600  # settled files (the cache skips files written in its last clock tick)
    for c in range(classes):
        d = folder / f"class_{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(c, n, classes):
            p = d / f"img_{i:07d}.jpg"
            p.write_bytes(blobs[i % len(blobs)])
            os.utime(p, (old, old))


def start(folder: Path) -> float:
    from resexp.data import build_data

    t = time.perf_counter()
    build_data({"name": "image_folder", "root": str(folder), "image_size": 64, "num_workers": 0}, seed=0)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--make", action="store_true")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--change", type=int, default=10)
    a = ap.parse_args()
    if a.make:
        t = time.perf_counter()
        make(a.folder, a.n)
        print(f"wrote {a.n} files in {time.perf_counter() - t:.0f} s")
        return
    from PIL import Image

    files = sorted(a.folder.glob("*/*.jpg"))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RESEXP_CACHE"] = cache
        cold = start(a.folder)
        cached = start(a.folder)
        rng = np.random.default_rng(1)
        for p in rng.choice(len(files), a.change, replace=False):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=70)
            files[p].write_bytes(buf.getvalue())
        changed = start(a.folder)
    print(f"{len(files):,} files, {os.cpu_count()} cores: cold {cold:.1f} s, cached {cached:.1f} s, "
          f"after changing {a.change} files {changed:.1f} s")


if __name__ == "__main__":
    main()
