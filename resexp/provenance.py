"""What reproduces a run, in its `run_info.json` (rank 0 writes it when training starts) and in the
trackers' tags: resexp's version, the git commit and dirty flag of the working directory's repository
and of resexp's own checkout, torch / torchvision / CUDA / cuDNN versions, the devices, the command
line, and the trackers' run ids (a resumed run continues those runs).

A resumed run keeps the record of the run it continues (its directory's, or the one it resumed from)
and appends its own facts, with the checkpoint it started from, to `resumes`.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from pathlib import Path

import resexp
from resexp.files import atomic_write_text
from resexp.run_dir import RunPaths


def git_state(path: Path) -> dict | None:
    """{"commit", "dirty", "root"} of the repository holding `path`; None outside one (or without git).
    Dirty: a tracked file differs from the commit (untracked files do not count, as for `git describe --dirty`)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        root, commit = git("rev-parse", "--show-toplevel"), git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty, "root": root}


def resexp_checkout() -> dict | None:
    """The git state of resexp's own source when it runs from a checkout (not from an installed copy
    that merely sits inside some repository, such as a virtual environment in a project)."""
    source = Path(resexp.__file__).resolve().parent.parent
    state = git_state(source)
    return state if state is not None and Path(state["root"]).resolve() == source else None


def devices() -> list[str]:
    """The CUDA devices this process sees by name, or the CPU's model."""
    import torch

    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return [line.split(":", 1)[1].strip()]
    except OSError:
        pass
    return [platform.processor() or platform.machine()]


def command() -> str:
    """The command line as typed: `python -m resexp ...` rather than the path of resexp/__main__.py.
    A sweep job's: the command that runs that job alone (its own overrides, not the sweep's `-m a=1,2`)."""
    first = Path(sys.argv[0])
    head = ["python", "-m", "resexp"] if (first.name, first.parent.name) == ("__main__.py", "resexp") else [sys.argv[0]]
    job = sweep_job_overrides()
    return shlex.join([*head, *(sys.argv[1:] if job is None else job)])


def sweep_job_overrides() -> list[str] | None:
    """A sweep job's own overrides (its values of the swept keys among them), None outside a sweep."""
    from resexp.run_dir import is_multirun

    if not is_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def collect(device: str, world_size: int) -> dict:
    """This process's facts: what run_info.json records for a run or a resume."""
    import torch  # torchvision's version from its metadata: importing it costs a default job ~1.4 s

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command(), "cwd": os.getcwd(), "python": sys.executable,
        "resexp": resexp.__version__,
        "git": {"cwd": git_state(Path.cwd()), "resexp": resexp_checkout()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": package_version("torchvision"), "cuda": torch.version.cuda,
                     "cudnn": str(cudnn) if cudnn else None},
        "host": socket.gethostname(), "device": device, "devices": devices(), "world_size": world_size,
    }


def tags(info: dict, model: str, data: str) -> dict[str, str]:
    """The facts as the trackers' tags (flat strings; what is unknown is left out)."""
    git = info["git"]["cwd"] or info["git"]["resexp"]
    values = {"model": model, "data": data, "host": info["host"], "resexp": info["resexp"],
              "git_commit": git and git["commit"], "git_dirty": git and str(git["dirty"]).lower(),
              **info["versions"], "device": info["device"], "devices": ", ".join(info["devices"]),
              "world_size": str(info["world_size"]), "command": info["command"]}
    return {k: str(v) for k, v in values.items() if v is not None}


def read(run_dir: Path) -> dict:
    """A run directory's run_info.json; {} when it has none (a run from before it existed)."""
    try:
        return json.loads(RunPaths(run_dir).run_info.read_text())
    except (OSError, ValueError):
        return {}


def original(paths: RunPaths, resumed_from: Path) -> dict:
    """The record of the run a resume continues: in its own directory (a requeued job), else in the
    directory of the last.pt it resumed from; {} for a run from before run_info.json existed."""
    return read(paths.root) or read(resumed_from.parent.parent)


def record(paths: RunPaths, info: dict, trackers: dict, resumed_from: Path | None = None) -> dict:
    """Write run_info.json: this run's facts and its trackers' run ids; for a resume (the last.pt it
    started from), the original run's record with this resume appended to `resumes`."""
    if resumed_from is None:
        record = {**info, "trackers": trackers}
    else:
        first = original(paths, resumed_from) or info
        record = {**first, "trackers": {**first.get("trackers", {}), **trackers},
                  "resumes": [*first.get("resumes", []), {**info, "from": str(resumed_from)}]}
    atomic_write_text(paths.run_info, json.dumps(record, indent=2))
    return record
