"""Which memory layout trains faster on this CPU: a training step (forward, backward, SGD) of each
network at its data's size, channels_last against contiguous, in one process, timed alternately
(5 rounds, median ratio). It chose `trainer.channels_last`'s default on CPU (null: on).

    python benchmarks/bench_layout.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import hardware, median  # noqa: E402

from resexp.config import compose  # noqa: E402
from resexp.models import build_model  # noqa: E402

# (model, channels, side, batch): the default job, MNIST-sized, CIFAR-sized and one ImageNet-sized step
CASES = [("resnet20", 1, 8, 64), ("resnet20", 1, 28, 128), ("lenet5", 1, 28, 128), ("resnet56", 3, 32, 32),
         ("resnet18_cifar", 3, 32, 32), ("preact_resnet18_cifar", 3, 32, 32), ("vgg13_bn", 3, 32, 32),
         ("resnet50", 3, 224, 4)]
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def stepper(name: str, channels: int, side: int, batch: int, layout: torch.memory_format):
    """A function running n training steps in `layout`; returns seconds per step."""
    torch.manual_seed(0)
    model = build_model(compose([f"model={name}"]).model, num_classes=10, in_channels=channels, image_size=side)
    model = model.to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, side, side).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,))

    def steps(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / n
    return steps


def main() -> None:
    print(hardware(torch.device("cpu")))
    print("| network | input | batch | channels_last / contiguous step time (median of 5) | range |")
    print("|---|---|---:|---:|---|")
    for name, channels, side, batch in CASES:
        run = {k: stepper(name, channels, side, batch, v) for k, v in LAYOUTS.items()}
        for steps in run.values():
            steps(2)  # warm-up: oneDNN picks its kernels on first use
        n = max(2, round(1.0 / run["contiguous"](1)))  # about a second per timing
        ratios = sorted(run["channels_last"](n) / run["contiguous"](n) for _ in range(5))
        print(f"| {name} | {channels}x{side}x{side} | {batch} | {median(ratios):.3f} "
              f"| {ratios[0]:.3f}-{ratios[-1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
