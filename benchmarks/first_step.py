"""`python -m resexp` with a stopwatch: prints when the first optimizer step has finished.

    RESEXP_T0=<time.time() of the parent just before it started this process> \
        python benchmarks/first_step.py [overrides]

Runs exactly the default CLI (`resexp.__main__.main`) after registering a global optimizer
step post-hook (torch.optim.optimizer.register_optimizer_step_post_hook) that fires once, prints
`FIRST_STEP <seconds since RESEXP_T0>` to stderr and removes itself: resexp itself is untouched
and no per-step cost stays behind.
"""

from __future__ import annotations

import os
import sys
import time

T0 = float(os.environ.get("RESEXP_T0") or time.time())

from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402


def _first_step(optimizer, args, kwargs) -> None:
    handle.remove()
    print(f"FIRST_STEP {time.time() - T0:.3f}", file=sys.stderr, flush=True)


handle = register_optimizer_step_post_hook(_first_step)

if __name__ == "__main__":
    print(f"IMPORTED {time.time() - T0:.3f}", file=sys.stderr, flush=True)  # interpreter + torch
    from resexp.__main__ import main

    sys.argv = ["resexp", *sys.argv[1:]]
    main()
