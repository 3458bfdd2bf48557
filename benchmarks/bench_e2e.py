"""End to end: wall time of the default `python -m resexp`, and time to the first training step.

Each repeat runs two fresh processes in a scratch directory (its own outputs/):
- `python -m resexp [overrides]`: the wall time from process start to exit, and the best
  validation accuracy it wrote to metrics.json;
- `python benchmarks/first_step.py [overrides]`: the same run, with a one-shot global optimizer
  hook that reports the seconds from process start (the parent's clock just before it started the
  child) to the end of the first optimizer step; also when torch finished importing.
The reference here is the interpreter itself: `python -c "import torch"` is timed the same way,
so the start-up cost that resexp adds (Hydra, composing, data, model) can be read off.

    python benchmarks/bench_e2e.py                 # the default run, 10 epochs of resnet20 on digits
    python benchmarks/bench_e2e.py --quick         # trainer.epochs=1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, hardware, median, pick_device, save, table  # noqa: E402


def child_env(t0: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["RESEXP_T0"] = repr(t0)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_process(cmd: list[str], cwd: Path, timeout: float) -> dict:
    t0 = time.time()
    p = subprocess.run(cmd, cwd=cwd, env=child_env(t0), capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out = {"wall_s": wall}
    for key in ("FIRST_STEP", "IMPORTED"):
        m = re.search(rf"^{key} ([0-9.]+)$", p.stderr, re.MULTILINE)
        if m:
            out[key.lower() + "_s"] = float(m.group(1))
    return out


def newest_metrics(cwd: Path) -> dict | None:
    files = sorted((cwd / "outputs").glob("*/*/metrics.json"), key=lambda f: f.stat().st_mtime)
    return json.loads(files[-1].read_text()) if files else None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="trainer.device for the runs: cpu | cuda | auto")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="trainer.epochs=1")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*", help="extra overrides for both runs")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    dev = [] if args.device == "auto" else [f"trainer.device={device.type}"]
    overrides = [*dev, *(["trainer.epochs=1"] if args.quick else []), *args.overrides]
    hw = hardware(device)
    print(f"end to end on {hw}: python -m resexp {' '.join(overrides)}".rstrip(), flush=True)

    samples: dict[str, list] = {"torch_import_s": [], "wall_s": [], "first_step_s": [], "hooked_wall_s": [],
                                "imported_s": [], "val_acc": [], "train_s": []}
    with tempfile.TemporaryDirectory(prefix="resexp-e2e-") as tmp:
        for r in range(args.repeats):
            base = Path(tmp) / f"r{r}"
            for sub in ("plain", "hooked", "torch"):
                (base / sub).mkdir(parents=True)
            bare = run_process([sys.executable, "-c", "import torch, torchvision"], base / "torch", args.timeout)
            samples["torch_import_s"].append(bare["wall_s"])
            plain = run_process([sys.executable, "-m", "resexp", *overrides], base / "plain", args.timeout)
            metrics = newest_metrics(base / "plain")
            hooked = run_process([sys.executable, str(ROOT / "benchmarks" / "first_step.py"), *overrides],
                                 base / "hooked", args.timeout)
            samples["wall_s"].append(plain["wall_s"])
            samples["first_step_s"].append(hooked.get("first_step_s"))
            samples["imported_s"].append(hooked.get("imported_s"))
            samples["hooked_wall_s"].append(hooked["wall_s"])
            if metrics:
                samples["val_acc"].append(metrics["best"]["val_acc"])
                samples["train_s"].append(sum(h["seconds"] for h in metrics["history"]))
            print(f"  repeat {r + 1}: wall {plain['wall_s']:.1f} s, first step after {hooked.get('first_step_s')} s, "
                  f"best val acc {metrics['best']['val_acc'] if metrics else None}", flush=True)
    row = {k: median([v for v in vals if v is not None]) for k, vals in samples.items()}
    row["command"] = "python -m resexp " + " ".join(overrides)
    print(table([row], [("wall_s", "wall s"), ("first_step_s", "first step s"), ("torch_import_s", "import torch s"),
                        ("train_s", "epochs s (metrics.json)"), ("val_acc", "best val acc")]))
    result = {"benchmark": "e2e", "hardware": hw, "device": device.type, "row": row, "samples": samples}
    save(result, args.json)
    return result


if __name__ == "__main__":
    main()
