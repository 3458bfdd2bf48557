"""A run that stops before it completes: metrics.json agrees with the files on disk (its `best` is the
epoch best.pt holds, even when the save of a newer one failed) and says what is complete and what is
not, and the error to show is one line:

    interrupted  a signal: where last.pt is from and how to resume, or what of the after-run report is missing
    pruned       a search's pruner stopped the trial after a validation (resexp/sweeps/trial.py): its last.pt is current
    failed       an error; a full disk names the file, the file system, and the previous file that is intact
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from resexp.errors import CheckpointError, DiskFullError
from resexp.run_dir import write_metrics
from resexp.sweeps.trial import Pruned
from resexp.train.checkpoint import read
from resexp.train.result import EVALUATION, REPORT, TRAINING, RunResult
from resexp.train.signals import Interrupted, StopNow, position, resume_hint

log = logging.getLogger("resexp")


def _held(path: Path) -> dict | None:
    """A checkpoint's plain entries, or None when there is none (mmap: its tensors are not read)."""
    try:
        state = read(path, mmap=True)
    except CheckpointError:  # a missing or unreadable file holds nothing a message can name
        return None
    return state if isinstance(state, dict) else None


def _when(path: Path, held: dict) -> str:
    """Where a checkpoint file is from: best.pt's epoch, last.pt's position."""
    if path.name == "best.pt":
        return f"epoch {held.get('best', {}).get('epoch')}"
    return position(held.get("epoch", 0), held.get("batch", 0))


def _signalled(e: KeyboardInterrupt, result: RunResult, best: dict | None, last: dict | None) -> Interrupted:
    """A signal that stopped the run at once: where last.pt is from, or what of the run is not complete."""
    paths, run_dir, stage = result.paths, result.paths.root, result.stage
    name = signal.Signals(e.signum).name if isinstance(e, StopNow) else "SIGINT"
    if stage == TRAINING:
        return Interrupted(f"stopped at once by a second {name}; " + (
            f"last.pt is from {_when(paths.last, last)}. {resume_hint(run_dir)}" if last else
            "no last.pt was written yet"))
    missing = [EVALUATION] if stage == EVALUATION else []
    missing += [REPORT] if result.report else []
    return Interrupted(
        f"stopped by {name} after training, during {stage}: training is complete (last.pt "
        f"{_when(paths.last, last or {})}, best.pt {_when(paths.best, best or {})}); not complete: "
        f"{' and '.join(missing)}. To write it: python -m resexp <same overrides> trainer.resume={run_dir}")


def record_stop(result: RunResult, e: BaseException) -> tuple[str, BaseException]:
    """Write metrics.json for a run that `e` stopped during `result.stage`; returns the status written
    there (interrupted, pruned or failed) and the error to raise: a one-line Interrupted for a signal, a
    DiskFullError that says what is intact, or `e` itself."""
    paths, run_dir = result.paths, result.paths.root
    best, last = (_held(p) if result.is_main else None for p in (paths.best, paths.last))
    status, error = "failed", e
    if isinstance(e, Pruned):
        status = "pruned"
    elif isinstance(e, Interrupted):  # the first signal in training: last.pt was saved, and the line says so
        status = "interrupted"
    elif isinstance(e, KeyboardInterrupt):
        status, error = "interrupted", _signalled(e, result, best, last)
    elif isinstance(e, DiskFullError):
        path = Path(e.path)
        held = {paths.best: best, paths.last: last}.get(path, {})  # other files: metrics.json, the report's
        intact = f"; the previous {path.name}{f' ({_when(path, held)})' if held else ''} is intact" \
            if held is not None else f"; there was no earlier {path.name}"
        if held and path == paths.last:
            intact += f". {resume_hint(run_dir)} once there is space"
        error = DiskFullError(f"{e}{intact}", path)
    extra = {"pruned_epoch": e.epoch} if isinstance(e, Pruned) else {}
    if best is not None and best.get("best", {}).get("epoch") != result.state.monitor.best.get("epoch"):
        extra["best"] = best["best"]  # the save of a newer best failed: best.pt still holds this one
    elif best is None and result.is_main:
        extra["best"] = {}
    try:
        write_metrics(run_dir, result.metrics(status, error=f"{type(error).__name__}: {error}", **extra))
    except DiskFullError as full:  # nothing more can be recorded
        log.error(f"metrics.json could not be updated: {full}")
    return status, error
