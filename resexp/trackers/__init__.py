"""Experiment trackers (the `logger` group besides TensorBoard): one class per tracker, registered by
the name of its section of the config (`logger.mlflow`, `logger.wandb`). RunLogger (resexp/train/logger.py)
calls them, on rank 0 only, so the trainer talks to one object.

A tracker records a run (`start` ... `finish`); a sweep's jobs are grouped under the sweep
(`sweep_started` / `sweep_ended`, called by resexp/sweeps/multirun.py's Hydra callback, keep what the jobs need
in the sweep directory's trackers.json). Each tracker imports its library only when used, so the
command line's `--help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import importlib.util
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from resexp.errors import ConfigError
from resexp.registry import Registry
from resexp.run_dir import is_multirun


class TrackerError(ConfigError):
    """A tracker that cannot start: its package is missing, or its store cannot be reached."""


@dataclass
class TrackedRun:
    """What a tracker is told about the run it records."""

    run_dir: Path
    outputs: Path  # outputs/ above the run directory: names are relative to it
    config: dict  # the run's config, plain
    info: dict  # run_info.json's facts (resexp/provenance.py)
    tags: dict[str, str]
    sweep: Path | None = None  # a sweep job's sweep directory
    previous: dict = field(default_factory=dict)  # a resumed run's trackers' ids, by tracker name

    @property
    def name(self) -> str:
        return run_name(self.run_dir, self.sweep, self.outputs)

    @property
    def group(self) -> str | None:
        """A sweep job's sweep, by name."""
        return label(self.sweep, self.outputs) if self.sweep is not None else None


def label(path: Path, outputs: Path) -> str:
    """A run's or a sweep's name in the trackers: its directory below outputs/ (`2026-12-03/11-00-00-000000`,
    `multirun/<date>/<time>/3`), or its own name elsewhere."""
    path = path.resolve()
    return str(path.relative_to(outputs.resolve())) if path.is_relative_to(outputs.resolve()) else path.name


def run_name(run_dir: Path, sweep: Path | None, outputs: Path | None = None) -> str:
    """A run's name in the trackers and TensorBoard's HParams: its directory below outputs/; a sweep
    job's, what differs between the sweep's jobs first (`optimizer.lr=0.05 · multirun/<date>/<time>/3`),
    read at a glance where a long name is cut."""
    from resexp.run_dir import outputs_root

    where = label(run_dir, outputs or outputs_root(run_dir))
    if sweep is None:
        return where
    from resexp.provenance import sweep_job_overrides

    differs = swept(sweep, sweep_job_overrides() or [])
    return f"{' '.join(differs)} · {where}" if differs else where


def swept(sweep_dir: Path, job: list[str]) -> list[str]:
    """The job's overrides of the keys its sweep varies: those its command line sweeps (`a=1,2`,
    `range(...)`, in the sweep directory's multirun.yaml) and those the command line does not name
    (chosen by a sweeper, Optuna)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        given = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task
        parsed = {o.get_key_element(): o for o in OverridesParser.create().parse_overrides(list(given))}
        mine = OverridesParser.create().parse_overrides(job)
    except Exception:  # noqa: BLE001 - no record of the sweep (a hand-made run): no name of this kind
        return []
    return [o.input_line for o in mine
            if o.get_key_element() not in parsed or parsed[o.get_key_element()].is_sweep_override()]


class Tracker(ABC):
    """The interface: a run's start, its epochs, its best metrics, its files and its end."""

    name: str  # the config section and registry key
    package: str  # the module to import; `pip install 'resexp[<name>]'` installs it

    def __init__(self, cfg):
        self.cfg = cfg  # this tracker's section of cfg.logger

    @abstractmethod
    def start(self, run: TrackedRun) -> dict:
        """Open (or, for a resumed run, reopen) the tracker's run; returns the ids run_info.json keeps."""

    @abstractmethod
    def log_epoch(self, values: dict[str, float], step: int) -> None:
        """The epoch's metrics (TensorBoard's names), at step = epoch."""

    @abstractmethod
    def log_best(self, metrics: dict[str, float]) -> None:
        """best.pt's re-evaluated metrics (epoch, val_acc, val_loss, ...)."""

    @abstractmethod
    def log_artifacts(self, files: list[Path], root: Path) -> dict[str, str] | None:
        """Files of the run directory, kept under their paths relative to `root`; returns those that
        could not be stored ({relative path: why}), the others stored all the same."""

    @abstractmethod
    def finish(self, status: str, error: str | None = None) -> None:
        """status: completed, failed or interrupted (as metrics.json says), with the error's line."""

    @classmethod
    def sweep_started(cls, cfg, sweep_dir: Path, outputs: Path) -> dict | None:
        """What the sweep's jobs need to join the sweep (kept in trackers.json); None: nothing."""
        return None

    @classmethod  # noqa: B027 - optional: nothing to close by default
    def sweep_ended(cls, cfg, ids: dict, status: str) -> None:
        """Close what sweep_started opened (`ids`): completed, failed (a job did not complete) or interrupted."""


TRACKERS: Registry[type[Tracker]] = Registry("tracker")
SWEEP_FILE = "trackers.json"  # in the sweep directory


def chosen(logger_cfg) -> list[str]:
    """The trackers the config chooses (its non-null sections but TensorBoard, which RunLogger writes)."""
    return [name for name in TRACKERS.list() if logger_cfg is not None and logger_cfg.get(name) is not None]


def check_trackers(logger_cfg) -> None:
    """Each chosen tracker's package is installed: checked before any data is read."""
    for name in chosen(logger_cfg):
        if importlib.util.find_spec(TRACKERS.get(name).package) is None:
            raise TrackerError(f"logger={name} needs the {TRACKERS.get(name).package} package: "
                               f"pip install 'resexp[{name}]'")


def build_trackers(logger_cfg) -> list[Tracker]:
    return [TRACKERS.get(name)(logger_cfg[name]) for name in chosen(logger_cfg)]


def sweep_ids(sweep_dir: Path | None) -> dict:
    """The sweep's trackers.json ({} outside a sweep, or when no tracker needed one)."""
    try:
        return json.loads((sweep_dir / SWEEP_FILE).read_text()) if sweep_dir is not None else {}
    except (OSError, ValueError):
        return {}


def start_sweep(logger_cfg, sweep_dir: Path, outputs: Path) -> None:
    check_trackers(logger_cfg)
    ids = {name: TRACKERS.get(name).sweep_started(logger_cfg[name], sweep_dir, outputs) for name in chosen(logger_cfg)}
    ids = {name: v for name, v in ids.items() if v is not None}
    if ids:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(ids, indent=2))


def end_sweep(logger_cfg, sweep_dir: Path, status: str) -> None:
    ids = sweep_ids(sweep_dir)
    for name in chosen(logger_cfg):
        if name in ids:
            TRACKERS.get(name).sweep_ended(logger_cfg[name], ids[name], status)


def current_sweep() -> Path | None:
    """The sweep directory when this process runs a multirun job."""
    from hydra.core.hydra_config import HydraConfig

    return Path(str(HydraConfig.get().sweep.dir)) if is_multirun() else None


def run_files(root: Path) -> list[Path]:
    """What a finished run hands its trackers: every file at the top of its directory (metrics.json,
    run_info.json, the report's figures, best.safetensors, model.json, ...) and its .hydra/ record;
    not the checkpoints (best.safetensors holds the best weights)."""
    return sorted(p for p in [*root.glob("*"), *root.glob(".hydra/*")] if p.is_file() and not p.name.startswith("."))


from resexp.trackers import mlflow as _mlflow  # noqa: E402,F401 - registers MLflowTracker
from resexp.trackers import wandb as _wandb  # noqa: E402,F401 - registers WandbTracker
