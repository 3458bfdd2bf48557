"""The same `python -m resexp` job from two checkouts (A: --base, B: this one), as interleaved pairs (A B,
B A, ...), each a fresh process in its own scratch directory: wall time and the training loop's own
seconds (metrics.json's history `seconds`, summed). The ratio is B / A per pair, and its median; for a
change that must not slow the loop (issue 19's callbacks: per epoch, never per step).

    git archive <base commit> | tar -x -C /tmp/base
    flock /work/bench.lock python benchmarks/bench_ab.py --base /tmp/base --pairs 3 trainer.epochs=2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, median  # noqa: E402


def one(root: Path, overrides: list[str]) -> tuple[float, float]:
    """(wall seconds, the loop's seconds) of one run of `root`'s resexp."""
    with tempfile.TemporaryDirectory(prefix="resexp-ab-") as d:
        run_dir = Path(d) / "run"
        cmd = [sys.executable, "-m", "resexp", *overrides, "trainer.report=false", "trainer.progress=false",
               f"hydra.run.dir={run_dir}"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=d, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode:
            raise RuntimeError(f"{' '.join(cmd)} in {root} failed:\n{p.stderr[-2000:]}")
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
        return wall, sum(r["seconds"] for r in history)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="checkout A (e.g. a git archive of the base commit)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="overrides for python -m resexp")
    args = p.parse_args(argv)
    walls, loops = [], []
    for i in range(args.pairs):
        order = [("A", args.base), ("B", ROOT)] if i % 2 == 0 else [("B", ROOT), ("A", args.base)]
        got = {name: one(root, args.overrides) for name, root in order}
        walls.append(got["B"][0] / got["A"][0])
        loops.append(got["B"][1] / got["A"][1])
        print(f"pair {i + 1}: A wall {got['A'][0]:.1f}s loop {got['A'][1]:.1f}s; B wall {got['B'][0]:.1f}s "
              f"loop {got['B'][1]:.1f}s; B/A wall {walls[-1]:.3f} loop {loops[-1]:.3f}", flush=True)
    print(f"median B/A: wall {median(walls):.3f}, loop {median(loops):.3f} ({args.pairs} pairs)")


if __name__ == "__main__":
    main()
