"""Best validation accuracy of candidate default jobs over seeds 0-4 (accuracy only: time them with
bench_e2e.py on an idle machine).

    python benchmarks/default_job_seeds.py                 # every candidate
    python benchmarks/default_job_seeds.py "8x8, zero-init off"
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIGITS_16 = ["data.image_size=16", "data.mean=[0.3055]", "data.std=[0.3186]"]  # the 16x16 pixels' statistics
CANDIDATES = {
    "16x16, 10 epochs, zero-init on": [*DIGITS_16, "model.zero_init_residual=true"],
    "16x16, 5 epochs, zero-init off": [*DIGITS_16, "trainer.epochs=5"],
    "16x16, 4 epochs, zero-init off": [*DIGITS_16, "trainer.epochs=4"],
    "8x8, zero-init on": ["model.zero_init_residual=true"],
    "8x8, zero-init off": [],  # the default job
}


def main() -> None:
    from resexp.config import compose
    from resexp.train import run

    print("| candidate | seed 0 | 1 | 2 | 3 | 4 | mean | min |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in sys.argv[1:] or CANDIDATES:
        accs = []
        for seed in range(5):
            with tempfile.TemporaryDirectory() as d:
                run(compose([*CANDIDATES[name], f"seed={seed}", "trainer.progress=false", "trainer.report=false"]),
                    run_dir=d)
                accs.append(json.loads((Path(d) / "metrics.json").read_text())["best"]["val_acc"])
        print(f"| {name} | " + " | ".join(f"{a:.2%}" for a in accs) + f" | {sum(accs) / 5:.2%} | {min(accs):.2%} |",
              flush=True)


if __name__ == "__main__":
    main()
