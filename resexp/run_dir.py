"""A run directory: where each of its files lives, who holds it, and the one writer of metrics.json
(the run's facts and epoch rows are resexp/records/).

    outputs/<date>/<time>/
      .hydra/config.yaml, .hydra/overrides.yaml   the composed config and the overrides
      checkpoints/best.pt, checkpoints/last.pt
      metrics.json, data_split.json, tb/, error.log (a failed sweep job)
      run_info.json   what reproduces the run: versions, git commit, devices, command line, trackers' run ids
      .resexp.lock    held (flock) by the one process that runs there: a second run started at the same moment stops
      wandb/          logger=wandb: the W&B run (offline: wandb sync <run dir>/wandb/offline-run-*)
      curves.png, confusion_matrix.png, predictions.png, model_summary.txt, best.safetensors, model.json
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from resexp.errors import RunDirError
from resexp.files import atomic_write_text, check_writable
from resexp.ranks import is_main_process


@dataclass
class RunPaths:
    root: Path
    checkpoints: Path = field(init=False)
    best: Path = field(init=False)
    last: Path = field(init=False)
    metrics: Path = field(init=False)
    config: Path = field(init=False)  # the composed config (Hydra's record; resume=auto compares it)
    overrides: Path = field(init=False)
    data_split: Path = field(init=False)
    tensorboard: Path = field(init=False)
    error_log: Path = field(init=False)
    weights: Path = field(init=False)  # best.safetensors: the best weights without pickles
    card: Path = field(init=False)  # model.json: how to rebuild and feed the network
    run_info: Path = field(init=False)  # run_info.json: what reproduces the run (resexp/provenance.py)

    def __post_init__(self):
        self.root = Path(self.root)
        self.checkpoints = self.root / "checkpoints"
        self.best, self.last = self.checkpoints / "best.pt", self.checkpoints / "last.pt"
        self.metrics, self.data_split = self.root / "metrics.json", self.root / "data_split.json"
        self.config, self.overrides = self.root / ".hydra" / "config.yaml", self.root / ".hydra" / "overrides.yaml"
        self.tensorboard, self.error_log = self.root / "tb", self.root / "error.log"
        self.weights, self.card = self.root / "best.safetensors", self.root / "model.json"
        self.run_info = self.root / "run_info.json"

    def report_file(self, name: str) -> Path:
        """One of the run report's files (curves.png, model.json, ...): they sit at the top level."""
        return self.root / name


def outputs_root(run_dir: Path) -> Path:
    """`outputs/` for `outputs/<date>/<time>` and `outputs/multirun/<date>/<time>/<n>`."""
    for parent in run_dir.resolve().parents:
        if parent.name == "outputs":
            return parent
    return run_dir.resolve().parent.parent


def earlier_run(root: Path) -> str | None:
    """What shows that a run already used `root` (its metrics.json, its checkpoints/), or None. Hydra's
    own .hydra/ and log file do not count: the current launch writes them before the run starts."""
    paths = RunPaths(root)
    found = [p.name + ("/" if p.is_dir() else "") for p in (paths.metrics, paths.checkpoints) if p.exists()]
    return " and ".join(found) or None


def resumes_into(resume: str | None, root: Path) -> bool:
    """trainer.resume continues the run in `root`: auto (a requeued job continues in its own
    directory), that directory itself, or a checkpoint file in it."""
    if not resume:
        return False
    if str(resume) == "auto":
        return True
    target, root = Path(str(resume)).expanduser().resolve(), Path(root).resolve()
    return target in (root, RunPaths(root).checkpoints) or target.parent == RunPaths(root).checkpoints


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _new_dir_option() -> str:
    """The option that chooses another directory: a sweep's jobs get theirs under hydra.sweep.dir."""
    return "hydra.sweep.dir=..." if is_multirun() else "hydra.run.dir=..."


def check_run_dir_free(root: Path, resume: str | None) -> None:
    """A new run never writes over an earlier one (its best.pt, metrics.json, data split and
    TensorBoard events): refused, before anything is written, unless it resumes that run."""
    found = earlier_run(root)
    if found and not resumes_into(resume, root):
        raise RunDirError(f"run directory {root} already holds a run ({found}); continue it with "
                          f"trainer.resume={root}, or choose a new directory ({_new_dir_option()})")


CLAIM = ".resexp.lock"
_claims: dict[Path, object] = {}  # run directories this process holds: resolved path -> its FileLock


def claim_run_dir(root: Path, resume: str | None) -> bool:
    """Take the run directory for this process, atomically: an OS file lock (flock, released when the
    process ends, even by kill -9) held for the whole run, then the check that no earlier run used it.
    Checking alone raced: two runs started at the same moment both passed it and wrote into one directory.
    Returns False when this process holds it already (the Hydra callback took it before `run`)."""
    from filelock import FileLock, Timeout

    key = Path(root).resolve()
    if key in _claims:
        return False
    check_run_dir_writable(root)
    key.mkdir(parents=True, exist_ok=True)
    lock = FileLock(key / CLAIM, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirError(f"run directory {root} is in use by another run right now; wait for it to end, or "
                          f"choose a new directory ({_new_dir_option()})") from None
    except OSError as e:
        raise RunDirError(f"cannot write into {root}: {e.strerror}; make it writable or choose another directory "
                          f"({_new_dir_option()})") from None
    try:
        check_run_dir_free(root, resume)
    except BaseException:
        lock.release()
        raise
    _claims[key] = lock
    return True


def release_run_dir(root: Path) -> None:
    lock = _claims.pop(Path(root).resolve(), None)
    if lock is not None:
        lock.release()


def check_run_dir_writable(root: Path) -> None:
    """The run directory, and its checkpoints/ when a run continues there, accept files: a read-only
    one stops the run at start-up, not when the first checkpoint is due."""
    checkpoints = RunPaths(root).checkpoints
    for folder in (root, checkpoints) if checkpoints.is_dir() else (root,):
        try:
            check_writable(folder)
        except OSError as e:
            raise RunDirError(f"cannot write into {e.filename}: {e.strerror}; make it writable or choose "
                              f"another directory ({_new_dir_option()})") from None


class RunDirCallback(Callback):
    """The claim before Hydra writes its .hydra/ records and log file into the run directory: they
    would replace an earlier run's (or a concurrent one's), or fail with a page of traceback in a
    read-only directory (`resexp.train.pipeline` claims it for the Python API)."""

    def on_run_start(self, config, **kwargs: Any) -> None:
        from resexp.cli import exit_with_error, name_too_long

        try:
            claim_run_dir(Path(str(config.hydra.run.dir)), OmegaConf.select(config, "trainer.resume"))
        except RunDirError as e:
            exit_with_error(e)
        except OSError as e:  # a 300-character hydra.run.dir
            line = name_too_long(e, [f"hydra.run.dir={config.hydra.run.dir}"])
            if line is None:
                raise
            exit_with_error(e, line)

    def on_run_end(self, config, **kwargs: Any) -> None:
        release_run_dir(Path(str(config.hydra.run.dir)))


# metrics.json's layout; a record starts as this (a job that failed before training wrote one)
EMPTY_METRICS = {"status": "failed", "best": {}, "last": {}, "history": [], "params": None}


def write_metrics(run_dir: Path, values: dict, merge: bool = False) -> None:
    """metrics.json (rank 0 only): `values` over the empty record, or with `merge` over what the file
    holds (a sweep job adding its wall time or its failure to the record training wrote)."""
    if not is_main_process():
        return
    record = (merge and read_metrics(run_dir)) or dict(EMPTY_METRICS)
    record.update(values)
    # a reader (the sweep report) never sees half a file
    atomic_write_text(RunPaths(run_dir).metrics, json.dumps(_finite(record), indent=2, allow_nan=False))


def read_metrics(run_dir: Path) -> dict | None:
    """metrics.json's record, or None where there is none (or only part of one: a copy cut short)."""
    try:
        record = json.loads(RunPaths(run_dir).metrics.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _finite(v):
    """JSON has no NaN/Inf: a diverged metric is written as null."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v
