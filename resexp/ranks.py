"""This process's place in a torchrun / submitit job, as the launcher's environment says.

Read by the Hydra entry point and the sweep callback before any process group exists, so it is
plain `os.environ` (no torch import)."""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """False on ranks > 0, which write nothing into the run directory."""
    return rank() == 0
