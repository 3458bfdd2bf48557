"""resexp's benchmark suite, one command.

    python benchmarks/run.py                       # every benchmark on this machine (CUDA when present)
    python benchmarks/run.py --device cpu --quick  # a smoke run: fewer steps, repeats and epochs
    python benchmarks/run.py --only train,e2e --out /tmp/bench

Benchmarks (each prints its figures and a ratio against a reference measured in the same process):
- train: training images/s of resexp's Trainer vs a hand-written PyTorch loop with the torchvision
  twin (benchmarks/bench_train.py); on CUDA also FLOPs per image and the fraction of the bf16 peak;
- data: the data path (benchmarks/bench_data.py, the data package's own benchmark);
- e2e: wall time of the default `python -m resexp` and time to its first training step
  (benchmarks/bench_e2e.py);
- fast (CUDA only): experiment=cifar10_fast on CIFAR-shaped synthetic data (benchmarks/bench_fast.py).
Results go to --out as <name>.json (+ data.log) and summary.md, the tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_common import ROOT, hardware, pick_device, table  # noqa: E402

ALL = ("train", "data", "e2e", "fast")


def run_data(device, quick: bool, out: Path) -> dict:
    script = HERE / "bench_data.py"
    if not script.is_file():
        return {"skipped": "benchmarks/bench_data.py is not there"}
    cmd = [sys.executable, str(script)]
    if quick:
        cmd += ["--n", "2000", "--epochs", "1", "--folder-n", "64"]
    if device.type == "cuda":
        cmd += ["--device", "cuda"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    text = p.stdout + (f"\n[stderr]\n{p.stderr[-4000:]}" if p.returncode else "")
    (out / "data.log").write_text(text)
    print(text, flush=True)
    return {"command": " ".join(shlex.quote(c) for c in ["python", *cmd[1:]]), "returncode": p.returncode,
            "seconds": time.perf_counter() - t0, "output": p.stdout}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (CUDA when present)")
    p.add_argument("--quick", action="store_true", help="fewer steps, repeats and epochs")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of: {', '.join(ALL)}")
    p.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks"), help="where the result files go")
    p.add_argument("--variants", default=None, help="train: bench_train.py's --variants (e.g. compile,cudagraphs)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = [b for b in args.only.split(",") if b]
    unknown = set(only) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    hw = hardware(device)
    date = datetime.date.today().isoformat()
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"resexp benchmarks, {date}, on {hw}\n  {command}", flush=True)
    quick = ["--quick"] if args.quick else []
    results, failed = {}, []
    for name in only:
        print(f"\n== {name} ==", flush=True)
        t0 = time.perf_counter()
        try:
            if name == "train":
                import bench_train

                results[name] = bench_train.main(["--device", str(device), *quick, "--json", str(out / "train.json"),
                                                  *(["--variants", args.variants] if args.variants else [])])
            elif name == "data":
                results[name] = run_data(device, args.quick, out)
            elif name == "e2e":
                import bench_e2e

                results[name] = bench_e2e.main([*quick, "--json", str(out / "e2e.json")])
            elif name == "fast":
                if device.type != "cuda":
                    print("skipped: needs CUDA (the preset's full size is GPU work)")
                    continue
                import bench_fast

                fast_args = ["--epochs", "4"] if args.quick else []
                results[name] = bench_fast.main(["--device", str(device), *fast_args, "--json", str(out / "fast.json")])
        except Exception:  # noqa: BLE001 - one failed benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)

    md = [f"Date {date}; hardware: {hw}; command: `{command}`", ""]
    if "train" in results:
        r = results["train"]
        cols = [("case", "case"), ("variant", "variant"), ("batch", "batch"), ("resexp_img_s", "resexp img/s"),
                ("reference_img_s", "hand-written img/s"), ("ratio", "ratio"), ("paired_ratio", "paired ratio")]
        if device.type == "cuda":
            cols += [("gflop_per_image", "GFLOP/img"), ("resexp_tflop_s", "TFLOP/s"), ("peak_fraction", "of bf16 peak")]
        md += ["### Training throughput", "", table(r["rows"], cols), ""]
    if "e2e" in results:
        md += ["### End to end", "", table([results["e2e"]["row"]], [
            ("command", "command"), ("wall_s", "wall s"), ("first_step_s", "first step s"),
            ("torch_import_s", "`import torch, torchvision` s"), ("train_s", "epochs s"),
            ("val_acc", "best val acc")]), ""]
    if "fast" in results:
        f = results["fast"]["row"]
        md += ["### cifar10_fast on CIFAR-shaped synthetic data", "", f"`{f['command']}`", "", table([f], [
            ("epochs", "epochs"), ("wall_s", "wall s"), ("first_step_s", "first step s"),
            ("steady_epoch_s", "steady epoch s"), ("images_per_s", "img/s"), ("compile_overhead_s", "compile s"),
            ("projected_train_s", f"projected {f['preset_epochs']} epochs s")]), ""]
    (out / "summary.md").write_text("\n".join(md))
    print("\n" + "\n".join(md))
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
