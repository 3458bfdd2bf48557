"""The search's settings (`hydra.sweeper` of an `hparams_search` preset) and its Optuna study: the
sampler, the pruner and the storage, built the same way by the sweep (which asks for trials) and by
each job (which reports its validation epochs to the pruner and tells the study how it ended).

The study lives in Optuna's JournalStorage file `<sweep dir>/optuna.journal` unless `storage` is an
RDB URL (sqlite:///..., postgresql://...): any number of processes, or SLURM jobs on a shared file
system, add trials to it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from resexp.errors import ConfigError

JOURNAL = "optuna.journal"
SAMPLERS = ("tpe", "cmaes", "random", "grid")
PRUNERS = ("median", "successive_halving", "hyperband", "none")
DIRECTIONS = {"val_acc": "maximize", "val_loss": "minimize"}  # trainer.monitor -> what is better


@dataclass
class SamplerConfig:
    name: str = "tpe"  # tpe | cmaes | random | grid
    seed: int | None = 0  # trial n is sampled with seed + n: a resumed search asks what a straight one would
    n_startup_trials: int = 10  # tpe, cmaes: random trials first


@dataclass
class PrunerConfig:
    name: str = "none"  # median | successive_halving | hyperband | none
    n_startup_trials: int = 5  # median: trials that are never pruned
    n_warmup_steps: int = 1  # median: epochs of each trial that are never pruned
    min_resource: int = 1  # successive_halving, hyperband: epochs before the first rung
    reduction_factor: int = 3  # successive_halving, hyperband
    max_resource: int | None = None  # hyperband: null = trainer.epochs


@dataclass
class SearchConfig:
    study_name: str = "search"
    storage: str | None = None  # null: <sweep dir>/optuna.journal; or an RDB URL
    direction: str | None = None  # maximize | minimize; null: from trainer.monitor
    n_trials: int = 20  # in total, over every run of this study
    n_jobs: int = 1  # trials at once with a launcher that is not the pool (joblib, slurm: a batch)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    params: dict = field(default_factory=dict)


def _checked(cls, given: Mapping, prefix: str):
    """`given` as a `cls`, or a one-line ConfigError naming the key and the valid ones."""
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in given.items():
        if key == "_target_":
            continue
        if key not in known:
            raise ConfigError(f"{prefix}{key} is not a key of the search (its keys: {', '.join(known)})")
        sub = {"sampler": SamplerConfig, "pruner": PrunerConfig}.get(key) if cls is SearchConfig else None
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{key} must be a mapping of {', '.join(f.name for f in fields(sub))}")
            value = _checked(sub, value, f"{prefix}{key}.")
        elif key == "params":
            value = dict(value or {})
        elif value is not None:
            kind = str(known[key].type)
            try:
                value = int(value) if kind.startswith("int") else value
            except (TypeError, ValueError):
                raise ConfigError(f"{prefix}{key}={value} is not an integer") from None
        values[key] = value
    return cls(**values)


def search_config(given: Mapping) -> SearchConfig:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(given, DictConfig):
        given = OmegaConf.to_container(given, resolve=True)
    cfg = _checked(SearchConfig, given, "hydra.sweeper.")
    for value, choices, key in ((cfg.sampler.name, SAMPLERS, "sampler.name"),
                                (cfg.pruner.name, PRUNERS, "pruner.name"),
                                (cfg.direction, (None, "maximize", "minimize"), "direction")):
        if value not in choices:
            raise ConfigError(f"hydra.sweeper.{key}={value} is not one of: {', '.join(c for c in choices if c)}")
    if cfg.n_trials < 1 or cfg.n_jobs < 1:
        raise ConfigError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
    return cfg


def direction(cfg: SearchConfig, monitor: str) -> str:
    """The study's direction: the objective is trainer.monitor's best value, and a direction that
    contradicts it is an error."""
    implied = DIRECTIONS[monitor]
    if cfg.direction not in (None, implied):
        raise ConfigError(f"hydra.sweeper.direction={cfg.direction} contradicts trainer.monitor={monitor} "
                          f"({monitor} is better when {'higher' if implied == 'maximize' else 'lower'}); "
                          f"use direction={implied} or leave it null")
    return implied


def sampler(cfg: SamplerConfig, number: int, space: Mapping | None = None):
    import optuna

    from resexp.sweeps.space import grid

    seed = None if cfg.seed is None else cfg.seed + number
    if cfg.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
    if cfg.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=cfg.n_startup_trials,
                                            warn_independent_sampling=False)
    if cfg.name == "grid":
        return optuna.samplers.GridSampler(grid(space or {}), seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def pruner(cfg: PrunerConfig, epochs: int | None = None):
    import optuna

    if cfg.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    if cfg.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.min_resource,
                                                      reduction_factor=cfg.reduction_factor)
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_resource, reduction_factor=cfg.reduction_factor,
                                              max_resource=cfg.max_resource or epochs or "auto")
    return optuna.pruners.NopPruner()


def storage(cfg: SearchConfig, sweep_dir: Path):
    """The study's storage: the journal file in the sweep directory, or the RDB URL given."""
    import optuna

    if not cfg.storage:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(sweep_dir / JOURNAL))
        return optuna.storages.JournalStorage(backend)
    if cfg.storage.startswith("sqlite:///"):  # SQLite creates the file, not its folder
        Path(cfg.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return cfg.storage


def storage_text(cfg: SearchConfig, sweep_dir: Path) -> str:
    return cfg.storage or str(sweep_dir / JOURNAL)


def open_study(cfg: SearchConfig, sweep_dir: Path, monitor: str, epochs: int | None = None, create: bool = False):
    """The study, with this search's pruner (a pruner is not kept in the storage: each process builds it)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # resexp logs each trial in its own words
    kwargs: dict[str, Any] = dict(study_name=cfg.study_name, storage=storage(cfg, sweep_dir),
                                  pruner=pruner(cfg.pruner, epochs), sampler=optuna.samplers.RandomSampler())
    if create:
        return optuna.create_study(direction=direction(cfg, monitor), load_if_exists=True, **kwargs)
    return optuna.load_study(**kwargs)


def as_dict(cfg: SearchConfig) -> dict:
    return asdict(cfg)
