"""A sweep job's own record, for sweeps that are run again: the same command with the same
`hydra.sweep.dir` continues a sweep that Ctrl-C, SIGTERM or kill -9 stopped.

Each job keeps `sweep_job.json` (its overrides, device, host, pid, start time) and, while it runs, a
lock on `.job.lock` in its directory. Run again with the same overrides, a job
- that completed (or was pruned, or failed) is kept as it is and not run again;
- that was stopped resumes from its own last.pt (trainer.resume=<its directory>);
- that was stopped before its first last.pt starts afresh (its partial record is removed).
A job whose directory another process holds (its lock) is refused; one whose directory holds a
job with other overrides is refused as any occupied run directory is (resexp/run_dir.py)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from resexp.errors import RunDirError
from resexp.run_dir import RunPaths, read_metrics

JOB_FILE, LOCK_FILE = "sweep_job.json", ".job.lock"
KEPT = ("completed", "pruned", "failed")  # a job that ended: run again, it is kept as it is


@dataclass
class Earlier:
    """What an earlier launch of the same job left in its directory."""

    status: str | None = None  # metrics.json's status; None: no earlier launch with these overrides
    metrics: dict | None = None
    resumable: bool = False  # a last.pt to continue from


@contextmanager
def job_lock(run_dir: Path):
    """Held while the job runs here: a second process given the same job directory is refused.
    Rank 0 holds it for a DDP job (its ranks share the directory)."""
    from resexp.ranks import is_main_process

    if not is_main_process():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunDirError(f"{run_dir} is in use by another process (a job of the same sweep still "
                              "running); wait for it, or choose another hydra.sweep.dir") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_locked(run_dir: Path) -> bool:
    """A process holds the job's lock (it runs there now)."""
    try:
        with open(run_dir / LOCK_FILE, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
        return False
    except FileNotFoundError:
        return False
    except OSError:
        return True


def earlier(run_dir: Path, overrides: list[str]) -> Earlier:
    """The earlier launch of this job (same overrides) in run_dir, if any."""
    try:
        record = json.loads((run_dir / JOB_FILE).read_text())
    except (OSError, ValueError):
        return Earlier()
    if sorted(record.get("overrides", [])) != sorted(overrides):
        return Earlier()  # another job: the run directory checks refuse to write over it
    metrics = read_metrics(run_dir)
    return Earlier(status=(metrics or {}).get("status", "started"), metrics=metrics,
                   resumable=RunPaths(run_dir).last.is_file())


def clear_partial(run_dir: Path) -> None:
    """A job stopped before its first last.pt: nothing to resume, so its partial record goes and it starts afresh."""
    paths = RunPaths(run_dir)
    paths.metrics.unlink(missing_ok=True)
    shutil.rmtree(paths.checkpoints, ignore_errors=True)
    for events in run_dir.glob("events.out.tfevents.*"):
        events.unlink()


def record(run_dir: Path, overrides: list[str], device: str | None, worker: dict) -> None:
    text = json.dumps({"overrides": overrides, "device": device, "worker": worker, "host": socket.gethostname(),
                       "pid": os.getpid(), "started": time.time()}, indent=1)
    (run_dir / JOB_FILE).write_text(text)
