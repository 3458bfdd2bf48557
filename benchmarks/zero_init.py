"""Does zeroing each residual branch's last layer (`model.zero_init_residual`) help or hurt early training?

    RESEXP_DATA=<root with MNIST/raw, FashionMNIST/raw> python benchmarks/zero_init.py [--out zero_init.md]

For each block family (v1 option-A `basic_pad`, v1 projection `basic`, v1 `bottleneck`, v2 `preact_basic`)
on a CIFAR-style ResNet-20 body, trains with the branch zeroed and not, same seed, and prints the
validation accuracy and final training loss: on the digits (the default job, seeds 0
and 1) and on the first 60 batches of real MNIST and Fashion-MNIST (one short epoch, no warm-up).
The defaults (v1 blocks on, v2 off, conf/model/resnet20.yaml off) were chosen from this table and a
ResNet-56 run (benchmarks/RESULTS.md, "Zero-initialised residual branches").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BLOCKS = ("basic_pad", "basic", "bottleneck", "preact_basic")
SETTINGS = {
    "digits": ([], (0, 1)),  # the default job
    "mnist": (["data=mnist", "data.download=false", "trainer.epochs=1", "trainer.limit_train_batches=60",
               "scheduler.warmup_epochs=0"], (0,)),
    "fashion_mnist": (["data=fashion_mnist", "data.download=false", "trainer.epochs=1",
                       "trainer.limit_train_batches=60", "scheduler.warmup_epochs=0"], (0,)),
}


def one(overrides: list[str]) -> dict:
    from resexp.config import compose
    from resexp.train import run

    with tempfile.TemporaryDirectory() as d:
        run(compose([*overrides, "trainer.progress=false", "trainer.report=false"]), run_dir=d)
        m = json.loads((Path(d) / "metrics.json").read_text())
    return {"val_acc": m["best"]["val_acc"], "train_loss": m["history"][-1]["train_loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    p.add_argument("--data", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    args = p.parse_args()
    lines = ["| data | block | seed | val acc, zero-init on | off | train loss, on | off |",
             "|---|---|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for data in args.data:
        over, seeds = SETTINGS[data]
        for block in BLOCKS:
            for seed in seeds:
                r = {z: one([*over, f"model/block={block}", f"model.zero_init_residual={z}", f"seed={seed}"])
                     for z in ("true", "false")}
                lines.append(f"| {data} | {block} | {seed} | {r['true']['val_acc']:.2%} | {r['false']['val_acc']:.2%} "
                             f"| {r['true']['train_loss']:.3f} | {r['false']['train_loss']:.3f} |")
                print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
