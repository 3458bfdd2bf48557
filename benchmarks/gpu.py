"""All of resexp's GPU measurements in one go, sized for a short loan of one GPU (about 9 minutes).

    python benchmarks/gpu.py --data <root> --out <dir>          # on the GPU machine
    python benchmarks/gpu.py --data <root> --out <dir> --dry-run  # on a CPU: checks every step, runs none

<root> holds the real data as resexp reads it (<root>/MNIST/raw/*.gz, <root>/FashionMNIST/raw/*.gz); the
GPU machine has no ../shared, so copy those files into a folder that travels with the tree. Each step
runs in its own process under its own time limit, its output goes to <dir>/<step>.log, and
<dir>/summary.json + summary.md collect the figures (accuracy, images/s, ratios) for benchmarks/RESULTS.md
with the date, GPU, driver and torch version. A step that fails or runs out of time is recorded and the
next one runs; a step that would not fit in what is left of --budget is skipped, and says so.

The dry run composes every resexp command's config (a bad key fails it, as it would on the GPU) and
parses every benchmark script's arguments with that script's own parser.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


@dataclass
class Step:
    name: str
    what: str  # one line for the summary: what the step answers
    kind: str  # "resexp": python -m resexp <args>; "script": python benchmarks/<args[0]> ...; "pytest"
    args: list[str]
    limit_s: int
    env: dict[str, str] = field(default_factory=dict)


def _run(*overrides: str) -> list[str]:
    """A resexp run on the GPU, its figures in metrics.json, no after-run report (time is short)."""
    return ["trainer.device=cuda", "trainer.progress=false", "trainer.report=false", *overrides]


# In order of need: a step that would not fit in what is left of --budget is skipped. Limits are from the
# 2026-12-04 H200 loan (a cold machine: torch.compile of ResNet-50 took 63 s, of preact ResNet-18 53 s); the
# steps measured then (ResNet-50 eager/compile throughput, default-job variants, pipelines) come last.
STEPS = [
    Step("gpu_tests", "pytest -m gpu: compile/bf16 learning, no host sync, fp16 scaler, deterministic CUDA resume",
         "pytest", ["tests/test_gpu.py", "-m", "gpu", "-n", "0", "-q"], 150),
    Step("fashion_10s", "time to accuracy: fashion_mnist_best's recipe cut to 10 epochs (goal >= 94% test, "
         "<= 10 s of training)", "resexp",
         _run("experiment=fashion_mnist_best", "data.download=false", "trainer.epochs=10", "trainer.compile=true"),
         100),
    Step("pool", "hydra/launcher=pool on one GPU: two workers against one, 2 jobs of fashion_mnist_best x 2 epochs",
         "script", ["bench_pool_gpu.py", "--device", "cuda", "--jobs", "2", "--", "experiment=fashion_mnist_best",
                    "data.download=false", "trainer.epochs=2"], 110),
    Step("throughput_cifar", "images/s, resexp vs a hand-written loop: CIFAR ResNet-18, bf16 channels_last, "
         "eager / compile default / reduce-overhead", "script",
         ["bench_train.py", "--device", "cuda", "--cases", "resnet18_cifar", "--variants", "eager,compile,cudagraphs",
          "--repeats", "3"], 120),
    Step("throughput_r50_cudagraphs", "the same for ResNet-50 at 224 with reduce-overhead (CUDA graphs)",
         "script", ["bench_train.py", "--device", "cuda", "--cases", "resnet50_224", "--variants", "cudagraphs",
                    "--repeats", "3"], 100),
    Step("fashion_best", "experiment=fashion_mnist_best end to end (goal >= 95% test)",
         "resexp", _run("experiment=fashion_mnist_best", "data.download=false", "trainer.compile=true"), 200),
    Step("mnist_resnet_seed1", "experiment=mnist_resnet, a second seed (seed 0: 99.65% on CPU)",
         "resexp", _run("experiment=mnist_resnet", "data.download=false", "seed=1"), 90),
    Step("throughput_autotune", "compile_mode=max-autotune (CUDA graphs), CIFAR ResNet-18",
         "script", ["bench_train.py", "--device", "cuda", "--cases", "resnet18_cifar",
                    "--variants", "autotune-cudagraphs", "--repeats", "3"], 150),
    Step("default_job", "the default job on the GPU (CPU: 98.3-99.4% val over seeds 0-4)",
         "resexp", _run(), 30),
    Step("default_job_no_tf32", "the default job with TF32 off (NVIDIA_TF32_OVERRIDE=0): is TF32 the gap?",
         "resexp", _run(), 30, env={"NVIDIA_TF32_OVERRIDE": "0"}),
    Step("default_job_deterministic", "the default job with trainer.deterministic=true (no cuDNN autotuning)",
         "resexp", _run("trainer.deterministic=true"), 30),
    Step("default_job_seed1", "the default job, seed 1 (is seed 0 an outlier on the GPU?)",
         "resexp", _run("seed=1"), 30),
    Step("throughput_r50", "ResNet-50 at 224, eager and compile default",
         "script", ["bench_train.py", "--device", "cuda", "--cases", "resnet50_224", "--variants", "eager,compile",
                    "--repeats", "3"], 110),
    Step("pipelines", "input pipelines to the GPU, train augmentation, batch 256: 224 image folder and shards, "
         "data.decode=pil (CPU workers) and device (nvJPEG), 4/8/16 workers (against ResNet-50's training rate)",
         "script", ["bench_shards.py", "--device", "cuda", "--skip-decoders", "--n", "2048", "--epochs", "2",
                    "--batch", "256", "--workers", "4,8,16", "--decodes", "pil,device", "--splits", "train"], 80),
    Step("data_path", "the data path with its on-GPU memory loader and the 224 image-folder stream",
         "script", ["bench_data.py", "--device", "cuda", "--folder-n", "512", "--epochs", "1"], 30),
]


JSON_SCRIPTS = ("bench_train.py", "bench_shards.py", "bench_pool_gpu.py")  # those that write their rows to --json


def command(step: Step, out: Path) -> list[str]:
    if step.kind == "resexp":
        return [sys.executable, "-m", "resexp", *step.args, f"hydra.run.dir={out / 'runs' / step.name}"]
    if step.kind == "script":
        figures_to = ["--json", str(out / f"{step.name}.json")] if step.args[0] in JSON_SCRIPTS else []
        return [sys.executable, str(HERE / step.args[0]), *figures_to, *step.args[1:]]
    return [sys.executable, "-m", "pytest", *step.args]


def check(step: Step, data: Path) -> None:
    """What the dry run proves for one step; raises on a config or argument the GPU run would reject."""
    if step.kind == "resexp":
        from resexp.config import compose

        compose(step.args)
    elif step.kind == "script":
        module = __import__(step.args[0].removesuffix(".py"))
        args = module.parser().parse_args(step.args[1:])  # argparse exits 2 on an unknown argument
        if getattr(args, "overrides", None):
            from resexp.config import compose

            compose(args.overrides)
        for name in getattr(args, "cases", "").split(",") if hasattr(args, "cases") else ():
            if name not in module.CASES:
                raise SystemExit(f"{step.name}: unknown case {name}")
        for name in (args.variants or "").split(",") if hasattr(args, "variants") else ():
            if name and name not in module.VARIANTS:
                raise SystemExit(f"{step.name}: unknown variant {name}")
    else:
        test = ROOT / step.args[0]
        if not test.is_file():
            raise SystemExit(f"{step.name}: {test} is missing")


def figures(step: Step, out: Path) -> dict:
    """The numbers a step produced: a run's best/test accuracy and training time, a benchmark's rows."""
    if step.kind == "resexp":
        path = out / "runs" / step.name / "metrics.json"
        if not path.is_file():
            return {}
        m = json.loads(path.read_text())
        best, history = m.get("best") or {}, m.get("history") or []
        return {"status": m.get("status"), "best_epoch": best.get("epoch"), "val_acc": best.get("val_acc"),
                "test_acc": best.get("test_acc"), "epochs": len(history),
                "train_s": round(sum(r.get("seconds", 0) for r in history), 2)}
    path = out / f"{step.name}.json"
    if path.is_file():
        rows = json.loads(path.read_text()).get("rows", [])
        keep = ("case", "variant", "batch", "resexp_img_s", "reference_img_s", "ratio", "peak_fraction", "img_s",
                "workers", "wall_s", "job_img_s", "combined_img_s")
        return {"rows": [{k: r[k] for k in keep if k in r} for r in rows]}
    return {}


def environment() -> dict:
    import torch

    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        info["driver"] = smi.stdout.strip() or None
    return info


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="root with MNIST/raw and FashionMNIST/raw")
    p.add_argument("--out", type=Path, required=True, help="where logs, runs and summary.{json,md} go")
    p.add_argument("--budget", type=int, default=500, help="seconds for all steps together")
    p.add_argument("--only", default=None, help="comma-separated step names (default: all)")
    p.add_argument("--dry-run", action="store_true", help="check every step on this machine, run none")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    steps = STEPS
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {s.name for s in STEPS})
        if unknown:
            raise SystemExit(f"error: unknown step(s) {', '.join(unknown)}; choose from: "
                             f"{', '.join(s.name for s in STEPS)}")
        steps = [s for s in STEPS if s.name in wanted]
    for raw in ("MNIST", "FashionMNIST"):
        if not list((args.data / raw / "raw").glob("*.gz")):
            raise SystemExit(f"error: --data {args.data}: no {raw}/raw/*.gz there (copy ../shared/data in)")
    os.environ["RESEXP_DATA"] = str(args.data.resolve())
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    planned = sum(s.limit_s for s in steps)
    if args.dry_run:
        for step in steps:
            check(step, args.data)
            print(f"ok  {step.name:28s} {step.limit_s:4d} s  {shlex.join(command(step, out))}")
        print(f"{len(steps)} steps, {planned} s of limits (budget {args.budget} s)")
        return 0

    summary = {"environment": environment(), "steps": {}}
    start = time.monotonic()
    for step in steps:
        left = args.budget - (time.monotonic() - start)
        if step.limit_s > left:
            summary["steps"][step.name] = {"what": step.what, "skipped": f"{step.limit_s} s > {left:.0f} s left"}
            continue
        cmd = command(step, out)
        t0 = time.monotonic()
        with open(out / f"{step.name}.log", "w") as log:
            # its own process group, so that a step cut off takes its compile workers and data loaders with it
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **step.env}, start_new_session=True)
            try:
                rc = proc.wait(timeout=step.limit_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = "timeout"
        summary["steps"][step.name] = {"what": step.what, "command": shlex.join(cmd), "rc": rc,
                                       "seconds": round(time.monotonic() - t0, 1), **figures(step, out)}
        print(f"{step.name}: rc={rc} {summary['steps'][step.name].get('seconds')} s", flush=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))  # what finished survives a cut
    lines = [f"# GPU run {summary['environment']}", ""]
    for name, s in summary["steps"].items():
        lines.append(f"- **{name}** ({s['what']}): " + json.dumps({k: v for k, v in s.items() if k != "what"}))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
