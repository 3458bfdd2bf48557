"""Where a training step's time goes: device busy time and the top kernels (torch.profiler).

Runs resexp's `Trainer.train_epoch` on one of bench_train's cases after a warm-up, profiles a few
steps and prints the wall time per step and the operations that take the most of it. On CUDA
these are the GPU kernels, and their summed time per step against the wall time says how busy the
GPU is (the rest it waits for the host): a step far from busy is bound by host work (launches,
Python), a busy one by the kernels themselves. On CPU they are the aten operators, by self time.

    python benchmarks/profile_step.py --case resnet18_cifar --variant compile --batch 1024
    python benchmarks/profile_step.py --device cpu --case resnet20_digits --variant fp32
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
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--case", default="resnet18_cifar", choices=list(CASES))
    p.add_argument("--variant", default=None, choices=list(VARIANTS), help="default: compile on CUDA, fp32 on CPU")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=10, help="profiled steps")
    p.add_argument("--warmup", type=int, default=10, help="steps per warm-up epoch (3 of them)")
    p.add_argument("--top", type=int, default=12, help="operations listed")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    logging.getLogger("resexp").setLevel(logging.WARNING)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    variant_name = args.variant or ("compile" if cuda else "fp32")
    case, variant = CASES[args.case], VARIANTS[variant_name]
    batch = args.batch or case.batch[device.type]
    n = batch * max(args.steps, args.warmup) * 2
    cfg = compose_case(case, device.type, device, variant, batch, args.steps, n)
    trainer, _, _ = build_resexp(cfg, device)

    def steps(k: int, epoch: int) -> None:
        trainer.tcfg.limit_train_batches, trainer.state.batch = k, 0
        trainer.train_epoch(epoch)  # ends with a device synchronisation on CUDA

    for epoch in range(3):  # compilation, autotuning, CUDA graph recording
        steps(args.warmup, 100 + epoch)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        steps(args.steps, 0)
        wall = (time.perf_counter() - t0) / args.steps
    if cuda:
        ops = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        us = {e.key: e.self_device_time_total for e in ops}
    else:  # top-level operators only (their self time excludes what they call)
        ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        us = {e.key: e.self_cpu_time_total for e in ops}
    counts = {e.key: e.count for e in ops}
    busy = sum(us.values()) / 1e6 / args.steps
    top = [{"op": k[:90], "ms_per_step": v / 1e3 / args.steps, "calls_per_step": counts[k] / args.steps}
           for k, v in sorted(us.items(), key=lambda kv: kv[1], reverse=True)[:args.top]]
    result = {"case": case.name, "variant": variant_name, "device": device.type, "batch": batch,
              "wall_ms_per_step": wall * 1e3, "busy_ms_per_step": busy * 1e3, "busy": busy / wall,
              "ops_per_step": sum(counts.values()) / args.steps, "top": top}
    what = "GPU kernels" if cuda else "aten operators (self time)"
    print(f"{case.name} {variant_name} batch {batch} on {device.type}: {wall * 1e3:.2f} ms a step (profiled), "
          f"{what} {busy * 1e3:.2f} ms ({busy / wall:.0%}), {result['ops_per_step']:.0f} a step")
    for row in top:
        print(f"  {row['ms_per_step']:7.3f} ms  x{row['calls_per_step']:<5.0f} {row['op']}")
    save(result, args.json)
    return result


if __name__ == "__main__":
    main()
