"""Real Fashion-MNIST: training from shards (data=shards, the streaming path) against the in-memory path,
same seed, same model, same epochs; prints both test accuracies and the pack time.

    RESEXP_DATA=/path/with/FashionMNIST/raw python benchmarks/shards_vs_memory.py [--epochs 2] [--model lenet5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return {"seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="write the packed set and both runs here (kept)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = a.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        packed = tmp / "fmnist"
        t = run(["resexp.pack", "data=fashion_mnist", f"out={packed}", "shard_size=16MB"], tmp)
        size = sum(p.stat().st_size for p in packed.glob("*.tar")) / 2**20
        n = len(list(packed.glob("*.tar")))
        print(f"pack: {t['seconds']:.1f} s (process included), {n} shards, {size:.1f} MiB")
        common = [f"model={a.model}", f"trainer.epochs={a.epochs}", f"seed={a.seed}", "data.batch_size=128"]

        for name, data in (("memory", ["data=fashion_mnist"]),
                           ("shards", ["data=shards", f"data.root={packed}", "data.image_size=28", "data.mean=[0.5]",
                                       "data.std=[0.5]", "data.val_split=0.1", f"data.num_workers={a.workers}"])):
            d = tmp / name
            r = run(["resexp", *common, *data, f"hydra.run.dir={d}"], tmp)
            m = json.loads((d / "metrics.json").read_text())
            best = m["best"]  # test_* are measured on best.pt
            print(f"{name}: {r['seconds']:.0f} s, best epoch {best['epoch']}: val_acc {best['val_acc']:.4f}, "
                  f"test_acc {best['test_acc']:.4f}, train_loss {best['train_loss']:.4f}")


if __name__ == "__main__":
    main()
