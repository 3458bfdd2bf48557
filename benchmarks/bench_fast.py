"""`experiment=cifar10_fast` timed on CIFAR-shaped synthetic data (where CIFAR-10 cannot be downloaded).

Runs the preset through the CLI (benchmarks/first_step.py, i.e. `python -m resexp` plus a one-shot
first-step stopwatch) with `data=synthetic`: 60,000 generated 32x32x3 images in 10 classes, split
50,000 train / 10,000 validation (CIFAR-10's sizes), everything else as the preset says (large batch,
bf16, channels_last, compile, crop+flip on the GPU, flip TTA, validation every 6 epochs).
It measures time, not accuracy: accuracy on synthetic data says nothing about CIFAR-10.

Reported: the process wall time; the time to the first optimizer step; each epoch's training seconds
(from metrics.json); the steady epoch time (median of epochs 3..); the compile/warm-up overhead
(epoch 1 minus a steady epoch); the time outside the training epochs (start-up, data, validations,
the final evaluation, checkpoints, exit); and the projection for the preset's epochs: steady epoch x
epochs.

    python benchmarks/bench_fast.py                  # the whole preset (18 epochs)
    python benchmarks/bench_fast.py --epochs 4       # a shorter run, projected to the preset's epochs
    python benchmarks/bench_fast.py --cifar10        # the real thing, where CIFAR-10 can be downloaded
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, hardware, median, pick_device, save  # noqa: E402
from bench_e2e import newest_metrics, run_process  # noqa: E402

SYNTHETIC_CIFAR = ["data=synthetic", "data.num_samples=60000", "data.val_split=0.16666667", "data.image_size=32",
                   "data.channels=3", "data.num_classes=10"]


def main(argv=None) -> dict:
    from resexp.config import compose

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=None, help="epochs to run (default: the preset's)")
    p.add_argument("--cifar10", action="store_true",
                   help="the real CIFAR-10 (downloaded once to data.root) instead of synthetic data: then "
                        "the accuracy is meaningful too (best val_acc = test accuracy, data.val_split=0)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*", help="extra overrides")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    preset_epochs = int(compose(["experiment=cifar10_fast"]).trainer.epochs)
    epochs = args.epochs or preset_epochs
    data = [] if args.cifar10 else SYNTHETIC_CIFAR
    overrides = ["experiment=cifar10_fast", *data, f"trainer.epochs={epochs}",
                 f"trainer.device={device.type}", "trainer.progress=false", *args.overrides]
    cfg = compose(overrides)
    hw = hardware(device)
    command = "python -m resexp " + " ".join(overrides)
    print(f"cifar10_fast on {hw}:\n  {command}", flush=True)
    with tempfile.TemporaryDirectory(prefix="resexp-fast-") as tmp:
        proc = run_process([sys.executable, str(ROOT / "benchmarks" / "first_step.py"), *overrides], Path(tmp),
                           args.timeout)
        metrics = newest_metrics(Path(tmp))
    history = metrics["history"]
    seconds = [h["seconds"] for h in history]
    steady = median(seconds[2:] if len(seconds) > 2 else seconds[1:] or seconds)
    n_val = sum(1 for h in history if h["val_acc"] is not None)
    row = {
        "command": command, "epochs": epochs, "wall_s": proc["wall_s"], "first_step_s": proc.get("first_step_s"),
        "epoch_seconds": seconds, "steady_epoch_s": steady, "images_per_s": 50_000 / steady,
        "compile_overhead_s": seconds[0] - steady, "train_s": sum(seconds),
        "outside_epochs_s": proc["wall_s"] - sum(seconds), "validations": n_val,
        "projected_train_s": steady * preset_epochs, "preset_epochs": preset_epochs,
        "batch_size": int(cfg.data.batch_size), "data": "cifar10" if args.cifar10 else "synthetic",
        "best_val_acc": metrics["best"].get("val_acc"), "test_acc": metrics["best"].get("test_acc"),
    }
    print(f"  wall {row['wall_s']:.1f} s, first step after {row['first_step_s']:.1f} s; epochs (s): "
          + ", ".join(f"{s:.2f}" for s in seconds))
    print(f"  steady epoch {steady:.2f} s = {row['images_per_s']:,.0f} img/s; compile/warm-up overhead in epoch 1 "
          f"{row['compile_overhead_s']:.1f} s; outside the training epochs (start-up, data, {n_val} validations "
          f"+ final evaluation, checkpoints, exit) {row['outside_epochs_s']:.1f} s")
    print(f"  projection for the preset's {preset_epochs} epochs, compiled and warm: {row['projected_train_s']:.1f} s "
          "of training")
    if args.cifar10:
        print(f"  CIFAR-10 test accuracy (best checkpoint, flip TTA): {row['test_acc']}")
    else:
        print("  accuracy NOT measured: synthetic data says nothing about CIFAR-10")
    result = {"benchmark": "cifar10_fast", "hardware": hw, "device": device.type, "row": row, "metrics": metrics}
    save(result, args.json)
    return result


if __name__ == "__main__":
    main()
