"""Where a training step's time goes: GPU busy fraction and the top kernels (torch.profiler).

Runs resexp's `Trainer.train_epoch` on one of bench_train's cases after a warm-up, profiles a few
steps and prints: wall time per step, the summed time of the GPU kernels per step (the GPU is idle,
waiting for the host, for the rest), and the kernels that take the most of it. A step that is far
from GPU-busy is bound by host work (launches, Python), one that is busy by the kernels themselves.

    python benchmarks/profile_step.py --case resnet18_cifar --variant compile --batch 1024
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import pick_device, save  # noqa: E402
from bench_train import CASES, VARIANTS, build_resexp, compose_case  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="resnet18_cifar", choices=list(CASES))
    p.add_argument("--variant", default="compile", choices=list(VARIANTS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=10, help="profiled steps")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--top", type=int, default=12, help="kernels listed")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    logging.getLogger("resexp").setLevel(logging.WARNING)
    device = pick_device("cuda")
    case, variant = CASES[args.case], VARIANTS[args.variant]
    batch = args.batch or case.batch["cuda"]
    n = batch * max(args.steps, args.warmup) * 2
    trainer, _, _ = build_resexp(compose_case(case, "cuda", device, variant, batch, args.steps, n), device)

    def steps(k: int, epoch: int) -> None:
        trainer.tcfg.limit_train_batches, trainer.batch = k, 0
        trainer.train_epoch(epoch)  # ends with a device synchronisation

    for epoch in range(3):  # compilation, autotuning, CUDA graph recording
        steps(args.warmup, 100 + epoch)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        steps(args.steps, 0)
        wall = (time.perf_counter() - t0) / args.steps
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu = sum(e.self_device_time_total for e in kernels) / 1e6 / args.steps
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    top = [{"kernel": e.key[:90], "ms_per_step": e.self_device_time_total / 1e3 / args.steps,
            "calls_per_step": e.count / args.steps} for e in kernels[:args.top]]
    result = {"case": case.name, "variant": args.variant, "batch": batch, "wall_ms_per_step": wall * 1e3,
              "gpu_ms_per_step": gpu * 1e3, "gpu_busy": gpu / wall,
              "kernel_launches_per_step": sum(e.count for e in kernels) / args.steps, "top": top}
    print(f"{case.name} {args.variant} batch {batch}: {wall * 1e3:.2f} ms a step (profiled), GPU kernels "
          f"{gpu * 1e3:.2f} ms ({gpu / wall:.0%} busy), {result['kernel_launches_per_step']:.0f} kernels a step")
    for row in top:
        print(f"  {row['ms_per_step']:7.3f} ms  x{row['calls_per_step']:<5.0f} {row['kernel']}")
    save(result, args.json)
    return result


if __name__ == "__main__":
    main()
