"""Two pool workers sharing one device against one worker (benchmarks/RESULTS.md, GPU runs).

    python benchmarks/bench_pool_gpu.py --device cuda [--jobs 2] [--json out.json] -- <resexp overrides>

Runs the same sweep (seed=0..jobs-1, each job the overrides given) twice through hydra/launcher=pool on
one device: once with one worker, once with two. For each: the sweep's wall time, and the images trained
per second, per job (the mean of its epochs' images_per_s) and combined (every job's trained images over
the span from the first job's start to the last job's end, from sweep_job.json and metrics.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweeps import ROOT, resexp  # noqa: E402


def sweep(workers: int, device: str, jobs: int, overrides: list[str], out: Path) -> dict:
    seeds = ",".join(str(s) for s in range(jobs))
    wall = resexp(["hydra/launcher=pool", f"hydra.launcher.devices=[{device}]", f"hydra.launcher.workers={workers}",
                   f"seed={seeds}", f"trainer.device={device}", "trainer.progress=false", "trainer.report=false",
                   *overrides, f"hydra.sweep.dir={out}"], ROOT)
    images, starts, ends, per_job = 0.0, [], [], []
    for n in range(jobs):
        started = json.loads((out / str(n) / "sweep_job.json").read_text())["started"]
        history = json.loads((out / str(n) / "metrics.json").read_text())["history"]
        images += sum(r["images_per_s"] * r["seconds"] for r in history)
        starts.append(started)
        ends.append((out / str(n) / "metrics.json").stat().st_mtime)
        per_job.append(sum(r["images_per_s"] for r in history) / len(history))
    return {"workers": workers, "wall_s": round(wall, 1), "job_img_s": [round(r) for r in per_job],
            "combined_img_s": round(images / (max(ends) - min(starts)))}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="resexp overrides every job gets")
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [sweep(w, a.device, a.jobs, a.overrides, Path(tmp) / f"workers{w}") for w in (1, 2)]
    rows[1]["ratio"] = round(rows[1]["combined_img_s"] / rows[0]["combined_img_s"], 2)
    for r in rows:
        print(json.dumps(r))
    if a.json:
        a.json.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
