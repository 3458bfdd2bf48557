"""The default job against the same job written by hand: wall time of `python -m resexp` (report
included) and of benchmarks/handwritten_default_job.py, each a fresh process in its own scratch
directory, run as interleaved pairs (A B, B A, ...); the ratio is resexp / hand-written per pair, and
its median. Also the report's own seconds, as the run logs them.

    flock /work/bench.lock python benchmarks/bench_default_job.py --pairs 5
    python benchmarks/bench_default_job.py --pairs 3 trainer.report=false   # the run without its report
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, median  # noqa: E402


def timed(cmd: list[str], cwd: Path, root: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return wall, p.stdout + p.stderr


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--resexp-root", type=Path, default=ROOT, help="the checkout whose resexp runs (before/after)")
    p.add_argument("overrides", nargs="*", help="extra overrides for python -m resexp")
    args = p.parse_args(argv)
    resexp = [sys.executable, "-m", "resexp", "trainer.device=cpu", *args.overrides]
    hand = [sys.executable, str(ROOT / "benchmarks" / "handwritten_default_job.py"), "out"]
    ratios, walls, reports = [], {"resexp": [], "hand": []}, []
    with tempfile.TemporaryDirectory(prefix="resexp-default-job-") as tmp:
        for i in range(args.pairs):
            order = [("resexp", resexp), ("hand", hand)]
            got = {}
            for name, cmd in order if i % 2 == 0 else order[::-1]:
                cwd = Path(tmp) / f"{i}-{name}"
                cwd.mkdir()
                got[name], out = timed(cmd, cwd, args.resexp_root)
                if name == "resexp":
                    m = re.search(r"run report written to .* \(([0-9.]+)s\)", out)
                    reports.append(float(m[1]) if m else None)
            ratios.append(got["resexp"] / got["hand"])
            for k in walls:
                walls[k].append(got[k])
            print(f"pair {i + 1}: resexp {got['resexp']:.2f} s, hand-written {got['hand']:.2f} s, "
                  f"ratio {ratios[-1]:.3f}, report {reports[-1]} s", flush=True)
    print(f"median: resexp {median(walls['resexp']):.2f} s, hand-written {median(walls['hand']):.2f} s, "
          f"ratio {median(ratios):.3f} (per-pair ratios {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
