"""Sweeps on digits (benchmarks/RESULTS.md, "Sweeps"):

1. a 24-trial search (TPE, seeded) with the median pruner against the same search without a pruner:
   trials pruned, wall time, best validation accuracy;
2. a grid of 8 jobs of uneven length (trainer.epochs=1..8) on resexp's pool against Hydra's joblib
   launcher, both with 2 workers: wall time and each job's start time (from its sweep_job.json).

    flock /work/bench.lock python benchmarks/bench_sweeps.py [--trials 24] [--epochs 4] [--out DIR]

Each part runs `python -m resexp -m ...` as a user would, one command after the other."""

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


def resexp(args: list[str], cwd: Path) -> float:
    """`python -m resexp -m <args>` from this checkout (ahead of whatever PYTHONPATH holds): its wall time."""
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "resexp", "-m", *args], cwd=cwd, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{out.stderr[-2000:]}")
    return wall


def search(pruner: str, trials: int, epochs: int, work: Path) -> dict:
    sweep = work / f"search-{pruner}"
    wall = resexp(["hparams_search=digits_optuna", f"hydra.sweeper.pruner.name={pruner}",
                   f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.sampler.n_startup_trials=6",
                   "hydra.sweeper.pruner.n_startup_trials=6", "hydra.sweeper.pruner.n_warmup_steps=1",
                   "model=resnet20", "data.batch_size=64", f"trainer.epochs={epochs}", "trainer.progress=false",
                   "trainer.report=false", f"hydra.sweep.dir={sweep}"], work)
    s = json.loads((sweep / "search.json").read_text())
    states = [t["state"] for t in s["trials"]]
    return {"pruner": pruner, "wall_s": wall, "pruned": states.count("pruned"), "complete": states.count("complete"),
            "best": s["best"]["value"], "epochs_trained": sum(t["last_epoch"] or 0 for t in s["trials"])}


def grid(launcher: list[str], name: str, work: Path) -> dict:
    sweep = work / f"grid-{name}"
    wall = resexp([*launcher, "model=resnet20", "trainer.epochs=1,2,3,4,5,6,7,8", "trainer.progress=false",
                   "trainer.report=false", f"hydra.sweep.dir={sweep}"], work)
    starts = {}
    for n in range(8):
        starts[n] = json.loads((sweep / str(n) / "sweep_job.json").read_text())["started"]
    t0 = min(starts.values())
    ends = {n: starts[n] + json.loads((sweep / str(n) / "metrics.json").read_text())["wall_s"] for n in starts}
    return {"launcher": name, "wall_s": wall, "starts": {n: round(s - t0, 1) for n, s in starts.items()},
            "ends": {n: round(e - t0, 1) for n, e in ends.items()}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--part", choices=["search", "grid", "both"], default="both")
    a = p.parse_args()
    work = a.out or Path(tempfile.mkdtemp(prefix="bench-sweeps-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}")
    if a.part in ("grid", "both"):
        rows = [grid(["hydra/launcher=pool", "hydra.launcher.workers=2"], "pool", work),
                grid(["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"], "joblib", work)]
        print("\n| launcher (2 workers) | wall time | job start times, s after the first (epochs 1..8) |")
        print("|---|---:|---|")
        for r in rows:
            print(f"| {r['launcher']} | {r['wall_s']:.1f} s | {', '.join(str(r['starts'][n]) for n in range(8))} |")
        print(json.dumps(rows))
    if a.part in ("search", "both"):
        rows = [search("none", a.trials, a.epochs, work), search("median", a.trials, a.epochs, work)]
        print("\n| pruner | trials pruned | epochs trained | wall time | best val acc |\n|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['pruner']} | {r['pruned']} of {a.trials} | {r['epochs_trained']} | {r['wall_s']:.0f} s | "
                  f"{100 * r['best']:.2f}% |")
        print(f"wall time saved by the median pruner: {1 - rows[1]['wall_s'] / rows[0]['wall_s']:.0%}")


if __name__ == "__main__":
    main()
