"""Training throughput: resexp's Trainer against a hand-written PyTorch loop, same process.

resexp side: `Trainer.train_epoch` over the in-memory loader, exactly as a run does (the composed
config, `build_data`, `build_model`, the Trainer's step, on-device metrics, scheduler, logging
interval). Reference side: the loop a PyTorch user writes (nanoGPT style): index the same uint8
tensors with a permutation, scale to float, zero_grad, forward, cross-entropy, backward, step;
the torchvision model of the same architecture where there is one (its weights copied from the
resexp model, strictly, which also proves the twins have the same shape), the same batch, precision,
memory format, compile setting and optimizer (SGD momentum 0.9, weight decay 5e-4, fused on CUDA).

Both sides are warmed up, then timed in alternating order (A B, B A, ...); the figures are medians
over the repeats and the ratio is resexp / reference. On CUDA each case also reports training FLOPs
per image (torch.utils.flop_counter over one forward + backward) and the fraction of the card's
dense bf16 peak that the throughput reaches.

    python benchmarks/bench_train.py --device cpu
    python benchmarks/bench_train.py --device cuda --variants eager,compile
    python benchmarks/bench_train.py --device cuda --cases resnet18_cifar --variants cudagraphs --batch 2048
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Timer, bf16_peak, hardware, median, pick_device, save, spread, table  # noqa: E402

from resexp.train.trainer import COMPILE_MODES  # noqa: E402

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


@dataclass
class Case:
    name: str
    model: str  # conf/model/<name>
    model_overrides: list[str]
    image_size: int
    channels: int
    num_classes: int
    batch: dict  # device type -> batch size
    steps: dict  # device type -> optimizer steps per timed repeat
    torchvision_twin: str | None  # how the reference model is built; None: a second resexp instance
    mean: list[float] | None = field(default=None)
    std: list[float] | None = field(default=None)


CASES = {
    "resnet18_cifar": Case("resnet18_cifar", "resnet18", ["model.stem=cifar"], 32, 3, 10,
                           batch={"cpu": 32, "cuda": 1024}, steps={"cpu": 4, "cuda": 40},
                           torchvision_twin="resnet18_cifar", mean=CIFAR_MEAN, std=CIFAR_STD),
    "resnet50_224": Case("resnet50_224", "resnet50", [], 224, 3, 1000,
                         batch={"cpu": 8, "cuda": 256}, steps={"cpu": 3, "cuda": 16},
                         torchvision_twin="resnet50", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    "resnet20_digits": Case("resnet20_digits", "resnet20", [], 32, 1, 10,
                            batch={"cpu": 64, "cuda": 1024}, steps={"cpu": 12, "cuda": 60},
                            torchvision_twin=None),
}

# precision, channels_last, torch.compile mode (None: eager)
VARIANTS = {
    "eager": ("bf16", True, None),
    "compile": ("bf16", True, "default"),
    "cudagraphs": ("bf16", True, "reduce-overhead"),
    "autotune": ("bf16", True, "max-autotune-no-cudagraphs"),
    "autotune-cudagraphs": ("bf16", True, "max-autotune"),
    "fp32": ("32", False, None),
    "fp32-compile": ("32", False, "default"),
}


def torchvision_model(twin: str, num_classes: int) -> nn.Module:
    if twin == "resnet18_cifar":  # the usual CIFAR adaptation: 3x3 stride-1 stem, no max-pool
        m = torchvision.models.resnet18(num_classes=num_classes)
        m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
        return m
    return getattr(torchvision.models, twin)(num_classes=num_classes)


def compose_case(case: Case, dev: str, device: torch.device, variant: tuple, batch: int, steps: int, n: int):
    from resexp.config import compose

    precision, channels_last, mode = variant
    norm = [f"data.mean={case.mean}", f"data.std={case.std}"] if case.mean else []
    return compose([
        f"model={case.model}", *case.model_overrides,
        "data=synthetic", f"data.num_samples={n}", "data.val_split=0.02", f"data.image_size={case.image_size}",
        f"data.channels={case.channels}", f"data.num_classes={case.num_classes}", f"data.batch_size={batch}",
        "data.augment.crop_padding=0", "data.augment.flip=false", *norm,
        "optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "optimizer.weight_decay=5e-4",
        f"trainer.device={device}", f"trainer.precision={precision}", f"trainer.channels_last={channels_last}",
        f"trainer.compile={mode is not None}", f"trainer.compile_mode={mode or 'default'}",
        "trainer.progress=false", f"trainer.limit_train_batches={steps}",
    ])


def build_resexp(cfg, device: torch.device):
    from resexp.config import checked
    from resexp.data import build_data
    from resexp.models import build_model
    from resexp.models.layer_table import count_params
    from resexp.records.facts import RunFacts
    from resexp.run_dir import RunPaths
    from resexp.train.environment import Env, configure_determinism, resolve_device, seed_everything
    from resexp.train.trainer import Trainer

    device = resolve_device(str(device))
    seed_everything(0)
    configure_determinism(False, device)
    data = build_data(cfg.data, device=device, seed=0)
    info = data.info
    model = build_model(cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
                        image_size=info.image_size)
    facts = RunFacts.from_data(cfg.model.name, info, count_params(model))
    run_dir = Path(tempfile.mkdtemp(prefix="resexp-bench-"))
    return Trainer(checked(cfg), model, data, Env(device=device), RunPaths(run_dir), facts), data, model


class Reference:
    """The hand-written loop, over the same uint8 tensors as the resexp loader."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int,
                 device: torch.device, variant: tuple, mean, std):
        precision, channels_last, mode = variant
        self.mf = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.mf)
        self.forward = torch.compile(self.model, mode=mode) if mode else self.model
        self.cuda_graphs = mode is not None and COMPILE_MODES[mode] != mode  # as the Trainer decides
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, **fused)
        dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision)
        self.autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
        self.images, self.labels, self.batch, self.device = images, labels, batch, device
        c = images.shape[1]
        self.mean = torch.tensor(mean or [0.0] * c, device=device).view(1, c, 1, 1)
        self.std = torch.tensor(std or [1.0] * c, device=device).view(1, c, 1, 1)

    def epoch(self, steps: int, epoch: int) -> int:
        self.model.train()
        g = torch.Generator(device=self.device).manual_seed(epoch)
        perm = torch.randperm(len(self.images), device=self.device, generator=g)
        bs = self.batch
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            x = self.images[idx].float().div_(255).sub_(self.mean).div_(self.std)
            x = x.contiguous(memory_format=self.mf)
            y = self.labels[idx]
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self.autocast:
                logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return steps * bs


def train_flops_per_image(model: nn.Module, case: Case) -> float:
    """Matmul/conv FLOPs of one forward + backward, per image (counted on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).to("meta").train()
    x = torch.randn(2, case.channels, case.image_size, case.image_size, device="meta")
    y = torch.zeros(2, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(m(x), y).backward()
    return counter.get_total_flops() / 2


def run_case(case: Case, device: torch.device, variant_name: str, repeats: int, batch: int | None,
             steps: int | None, warmup: int) -> dict:
    dev = device.type
    variant = VARIANTS[variant_name]
    batch = batch or case.batch[dev]
    steps = steps or case.steps[dev]
    n = int(batch * max(steps, warmup) / 0.98) + 2 * case.num_classes + batch  # train split >= batch*steps
    cfg = compose_case(case, dev, device, variant, batch, steps, n)
    trainer, data, model = build_resexp(cfg, device)
    images, labels = data.train.images, data.train.labels
    assert len(images) >= batch * steps, (len(images), batch, steps)

    if case.torchvision_twin:
        ref_model = torchvision_model(case.torchvision_twin, case.num_classes)
        twin = f"torchvision {case.torchvision_twin}"
    else:
        from resexp.models import build_model

        ref_model = build_model(cfg.model, num_classes=case.num_classes, in_channels=case.channels,
                                image_size=case.image_size)
        twin = f"resexp {case.model} (no torchvision twin)"
    ref_model.load_state_dict(copy.deepcopy(model).cpu().state_dict(), strict=True)
    ref = Reference(ref_model, images, labels, batch, device, variant, data.info.mean, data.info.std)
    flops = train_flops_per_image(model, case)

    def resexp_epoch(epoch: int, n_steps: int) -> int:
        trainer.tcfg.limit_train_batches = n_steps
        trainer.state.batch = 0
        return trainer.train_epoch(epoch)

    # warm-up: compilation, cuDNN autotuning, allocator growth
    for epoch in range(2 if variant[2] else 1):
        resexp_epoch(1000 + epoch, warmup)
        ref.epoch(warmup, 1000 + epoch)

    times = {"resexp": [], "reference": []}
    for r in range(repeats):
        order = ["resexp", "reference"] if r % 2 == 0 else ["reference", "resexp"]
        for side in order:
            with Timer(device) as t:
                images_done = resexp_epoch(r, steps) if side == "resexp" else ref.epoch(steps, r)
            times[side].append(images_done / t.seconds)
    res, refv = median(times["resexp"]), median(times["reference"])
    paired = median([a / b for a, b in zip(times["resexp"], times["reference"], strict=True)])
    row = {
        "case": case.name, "variant": variant_name, "device": dev, "batch": batch, "steps": steps,
        "repeats": repeats, "precision": variant[0], "channels_last": variant[1], "compile_mode": variant[2],
        "resexp_img_s": res, "reference_img_s": refv, "ratio": res / refv, "paired_ratio": paired,
        "resexp_spread": spread(times["resexp"]), "reference_spread": spread(times["reference"]),
        "reference_model": twin, "gflop_per_image": flops / 1e9,
        "resexp_tflop_s": flops * res / 1e12, "samples": times,
    }
    peak = bf16_peak(device)
    if peak:
        row["peak_tflop_s"] = peak / 1e12
        row["peak_fraction"] = flops * res / peak
        row["reference_peak_fraction"] = flops * refv / peak
    print(f"  {case.name:16s} {variant_name:8s} bs {batch:5d}: resexp {res:10,.0f} img/s  reference {refv:10,.0f} "
          f"img/s  ratio {res / refv:.3f} (paired {paired:.3f}; spreads {row['resexp_spread']:.1%} / "
          f"{row['reference_spread']:.1%})  {flops / 1e9:.2f} GFLOP/img"
          + (f"  {row['peak_fraction']:.1%} of bf16 peak" if peak else ""), flush=True)
    return row


COLUMNS = [("case", "case"), ("variant", "variant"), ("batch", "batch"), ("resexp_img_s", "resexp img/s"),
           ("reference_img_s", "reference img/s"), ("ratio", "ratio"), ("paired_ratio", "paired ratio"),
           ("gflop_per_image", "GFLOP/img (train)"), ("resexp_tflop_s", "TFLOP/s")]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated: {', '.join(VARIANTS)} (default: fp32 on CPU, eager,compile on CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 3 CPU, 5 CUDA)")
    p.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    p.add_argument("--steps", type=int, default=None, help="override every case's steps per repeat")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per side (default 1 CPU, 10 CUDA)")
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    logging.getLogger("resexp").setLevel(logging.WARNING)

    device = pick_device(args.device)
    dev = device.type
    variants = (args.variants or ("eager,compile" if dev == "cuda" else "fp32")).split(",")
    repeats = args.repeats or (2 if args.quick else (5 if dev == "cuda" else 3))
    warmup = args.warmup or (1 if dev == "cpu" else 10)
    hw = hardware(device)
    print(f"training throughput on {hw}", flush=True)
    rows = []
    result = {"benchmark": "train", "hardware": hw, "device": dev, "rows": rows}
    for name in args.cases.split(","):
        case = CASES[name]
        steps = args.steps or (max(2, case.steps[dev] // 2) if args.quick else None)
        for v in variants:
            t0 = time.perf_counter()
            rows.append(run_case(case, device, v, repeats, args.batch, steps, warmup))
            rows[-1]["bench_seconds"] = time.perf_counter() - t0  # set-up + compile + warm-up + repeats
            print(f"    ({rows[-1]['bench_seconds']:.0f} s with set-up, compilation and warm-up)", flush=True)
            save(result, args.json)  # after every case: a run cut short keeps what it measured
            gc.collect()  # the case's models, optimizers and data
            if dev == "cuda":
                torch.cuda.empty_cache()
    print(table(rows, COLUMNS + ([("peak_fraction", "of bf16 peak")] if dev == "cuda" else [])))

    return result


if __name__ == "__main__":
    main()
