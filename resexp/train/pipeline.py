"""One training job, as a sequence of named steps: resolve the resume, build data and model, prepare
the run directory, build the Trainer with its callbacks (checkpoints, tracking, best.pt re-evaluated, the
run report, metrics.json, logging, the user's), fit.

The config the caller passed is never written into: what the data adds (class count, channels)
goes into a copy, the run's config, that checkpoints and TensorBoard keep."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from resexp import provenance
from resexp.config import checked, to_plain
from resexp.data import build_data
from resexp.errors import CheckpointError, ConfigError
from resexp.models import build_model
from resexp.models.layer_table import count_params
from resexp.models.pretrained import check_pretrained, existing_file, load_backbone, read_state_dict
from resexp.records.facts import RunFacts
from resexp.run_dir import RunPaths, claim_run_dir, outputs_root, read_metrics, release_run_dir
from resexp.trackers import TrackedRun, build_trackers, check_trackers, current_sweep
from resexp.train import checkpoint
from resexp.train.callbacks import Callback, FinalEvaluation, MetricsFile, OnValidated, RunReport
from resexp.train.checkpoint import Checkpoints
from resexp.train.environment import Env, autocast, configure_determinism, seed_everything, setup, shared_run_dir
from resexp.train.logger import RunLogger, shows_progress
from resexp.train.signals import stop_at_once
from resexp.train.trainer import Trainer

log = logging.getLogger("resexp")


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def check_choices(cfg: DictConfig, device: torch.device):
    """The config's bounds, names and rules (its schemas' own checks), the trackers, precision on this
    device and the pretrained weights, before a data set is read or a model built: a typo fails at
    once rather than after minutes of loading. Returns the checked config (a RunConfig) the Trainer reads."""
    settings = checked(cfg)
    check_trackers(cfg.get("logger"))
    autocast(device, cfg.trainer.precision)
    if cfg.model.pretrained:
        check_pretrained(cfg.model.pretrained, cfg.model.name, cfg.model.arch)
    return settings


def run(cfg: DictConfig, run_dir: Path | None = None, on_validated=(), callbacks: Sequence[Callback] = ()) -> float:
    """Train as the config says; returns the best checkpoint's validation accuracy. `on_validated`:
    callables given (epoch, the epoch's EpochRecord) after each validation (a search's pruner);
    `callbacks`: the user's own (resexp.train.callbacks.Callback), called after resexp's."""
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    composed = to_plain(cfg)  # as the user asked for it, before data fills in the gaps
    env = setup(cfg.trainer)
    settings = check_choices(cfg, env.device)
    paths = RunPaths(shared_run_dir(run_dir, env))  # DDP: every rank works in rank 0's directory
    # rank 0 holds the directory until the run ends; a second run started at the same moment stops
    claimed = env.is_main and claim_run_dir(paths.root, cfg.trainer.resume)
    try:
        seed_everything(cfg.seed)
        configure_determinism(cfg.trainer.deterministic, env.device)

        resume_path = resolve_resume(cfg, settings, composed, paths, env)
        run_cfg, data, model, facts = build(cfg, env, finetune=resume_path is None)
        prepare_run_dir(paths, composed, data, facts, env, cfg.data.name)
        logger = RunLogger(paths.root, enabled=env.is_main, config=run_cfg, resumed=resume_path is not None,
                           tensorboard=cfg.get("logger") is None or cfg.logger.get("tensorboard") is not None,
                           trackers=build_trackers(cfg.get("logger")) if env.is_main else [])
        user = [*callbacks, *([OnValidated(on_validated)] if on_validated else [])]
        trainer = Trainer(settings, model, data, env, paths, facts,
                          checkpoints=Checkpoints(paths, to_plain(run_cfg), facts, write=env.is_main),
                          callbacks=run_callbacks(run_cfg, resume_path, logger, user),
                          progress=shows_progress(env.is_main, cfg.trainer.progress))
        return fit_and_report(trainer, resume_path, logger)
    finally:
        if claimed:
            release_run_dir(paths.root)


def resolve_resume(cfg: DictConfig, settings, composed: dict, paths: RunPaths, env: Env) -> Path | None:
    """The last.pt to continue from (trainer.resume), or None, with `settings`' device defaults set as that
    run chose them; a finetune_from file checked to exist."""
    resume_path = None
    if cfg.trainer.resume == "auto":
        # a requeued job (SLURM) continues in its own directory
        resume_path = paths.last if paths.last.is_file() else \
            checkpoint.find_auto(composed, outputs_root(paths.root), exclude=paths.root.resolve())
        if resume_path is None and env.is_main:
            log.info("trainer.resume=auto: no earlier run with this config has a last.pt; starting fresh")
    elif cfg.trainer.resume:
        resume_path = checkpoint.resolve(cfg.trainer.resume, outputs_root(paths.root))
    if resume_path is not None:
        held = checkpoint.read(resume_path, mmap=True)  # its plain entries; the weights stay on disk
        held = held if isinstance(held, dict) else {}
        check_something_to_train(resume_path, held, cfg.trainer.epochs, cfg.trainer.resume)
        compute_as_trained(settings, held)
    if cfg.trainer.finetune_from and resume_path is None:  # before the data is read: fail fast
        existing_file(cfg.trainer.finetune_from, "trainer.finetune_from")
    return resume_path


def compute_as_trained(settings, held: dict) -> None:
    """The defaults that depend on the device (null: trainer.channels_last, optimizer.fused) as the run
    whose last.pt holds `held` chose them, so that it continues bit for bit: its config records the layout,
    its optimizer state the kernel (an older resexp's run: contiguous and unfused on CPU)."""
    if settings.trainer.channels_last is None:
        chosen = ((held.get("config") or {}).get("trainer") or {}).get("channels_last")
        settings.trainer.channels_last = chosen if isinstance(chosen, bool) else None
    if getattr(settings.optimizer, "fused", False) is None:
        groups = (held.get("optimizer") or {}).get("param_groups") or [{}]
        settings.optimizer.fused = bool(groups[0].get("fused"))


def check_something_to_train(last: Path, held: dict, epochs: int, resume: str) -> None:
    """A resume of a run that completed trainer.epochs already would make a run directory with
    nothing trained in it: stopped, saying how to train it longer. A run stopped after its training
    (during the final evaluation or the report, by a signal, an error or a kill) resumes to write what
    it is missing. `held`: last.pt's contents."""
    done = int(held.get("epoch", 0)) if not held.get("batch") else None
    run_dir = last.parent.parent
    if done is not None and done >= epochs and finished(run_dir):
        raise CheckpointError(
            f"trainer.resume={resume}: the run in {run_dir} has trained {done} epochs and trainer.epochs={epochs} "
            f"leaves nothing to train; to train it longer, resume it with more epochs: "
            f"trainer.epochs={done + max(epochs, 1)} trainer.resume={run_dir}")


def finished(run_dir: Path) -> bool:
    """metrics.json says the run completed, or there is no record to say what it owes. Any other status
    after the last epoch (interrupted, failed, or `running` after a kill -9) owes its end-of-run steps."""
    record = read_metrics(run_dir)
    return record is None or record.get("status") == "completed"


def check_num_classes(model_cfg: DictConfig, info, data_name: str) -> None:
    """model.num_classes, when set, is the data's class count: fewer outputs stop at the first label
    past them (a page of IndexError), checked here once the data says how many it has."""
    n = model_cfg.get("num_classes")
    if n is not None and n != info.num_classes:
        raise ConfigError(f"model.num_classes={n}, but data {data_name} has {info.num_classes} classes; "
                          f"leave it unset (model.num_classes=null) to take the data's count")


def build(cfg: DictConfig, env: Env, finetune: bool) -> tuple[DictConfig, object, torch.nn.Module, RunFacts]:
    """(the run's config, data, model, facts). The run's config is a copy of cfg with the class
    count and channels the data set reports where cfg leaves them unset."""
    data = build_data(cfg.data, device=env.device, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    info = data.info
    check_num_classes(cfg.model, info, cfg.data.name)
    model = build_model(cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
                        image_size=info.image_size)
    finetune_from = cfg.trainer.finetune_from if finetune else None  # a resumed run has its own weights
    if finetune_from:
        fresh = load_backbone(model, read_state_dict(finetune_from, "trainer.finetune_from"),
                              f"trainer.finetune_from={finetune_from}")
        if env.is_main:
            log.info(f"fine-tuning from {finetune_from}; freshly initialised: {', '.join(fresh) or 'none'}")
    facts = RunFacts.from_data(cfg.model.name, info, count_params(model), cfg.model.num_classes, cfg.model.in_channels)
    run_cfg = OmegaConf.merge(cfg, {"model": {"num_classes": facts.num_classes, "in_channels": facts.in_channels}})
    return run_cfg, data, model, facts


def prepare_run_dir(paths: RunPaths, composed: dict, data, facts: RunFacts, env: Env, data_name: str) -> None:
    """The run directory with the composed config and the data split (rank 0), and the run's one-line summary."""
    if not env.is_main:
        return
    paths.root.mkdir(parents=True, exist_ok=True)
    if not paths.config.exists():  # Python API runs: the same record a Hydra run keeps (resume=auto reads it)
        paths.config.parent.mkdir(exist_ok=True)
        paths.config.write_text(OmegaConf.to_yaml(composed))
    if data.split is not None:
        paths.data_split.write_text(json.dumps(data.split, indent=1))
    log.info(f"model {facts.name}: {facts.params:,} parameters; data {data_name}: "
             f"{data.train.num_samples * env.world_size} train / {data.val.num_samples * env.world_size} val "
             f"images, {facts.num_classes} classes; device {env.device}; run dir {paths.root}")


class StartTracking(Callback):
    """run_info.json and the trackers' runs (rank 0) when fit starts; a resumed run continues the runs
    it recorded."""

    def __init__(self, logger: RunLogger, cfg: DictConfig, resume_path: Path | None):
        self.logger, self.cfg, self.resume_path = logger, cfg, resume_path

    def on_fit_start(self, trainer: Trainer) -> None:
        env, paths, cfg = trainer.env, trainer.result.paths, self.cfg
        if not env.is_main:
            return
        info = provenance.collect(str(env.device), env.world_size)
        previous = provenance.original(paths, self.resume_path).get("trackers", {}) if self.resume_path else {}
        tracked = TrackedRun(paths.root, outputs_root(paths.root), to_plain(cfg), info,
                             provenance.tags(info, cfg.model.name, cfg.data.name), current_sweep(), previous)
        provenance.record(paths, info, self.logger.start(tracked), self.resume_path)


def run_callbacks(cfg: DictConfig, resume_path: Path | None, logger: RunLogger,
                  user: Sequence[Callback]) -> list[Callback]:
    """What the run does around its loop, in the order the Trainer calls them (after the checkpoints):
    at the end best.pt re-evaluated, the run report, metrics.json, then the trackers' end; the user's last."""
    steps = [StartTracking(logger, cfg, resume_path), FinalEvaluation(collect=cfg.trainer.report)]
    if cfg.trainer.report:
        steps.append(RunReport(to_plain(cfg), logger))
    resumed = {"resumed_from": str(resume_path)} if resume_path else {}
    return [*steps, MetricsFile(**resumed), logger, *user]


def fit_and_report(trainer: Trainer, resume_path: Path | None, logger: RunLogger) -> float:
    """Resume if asked, then fit: train, re-evaluate best.pt, write the run report; metrics.json says how
    it ended (completed, failed or interrupted: stopped.py)."""
    try:
        if resume_path is not None:
            trainer.resume(resume_path)
            s = trainer.result.state
            if trainer.env.is_main:
                log.info(f"resumed from {resume_path} at epoch {s.epoch + 1}, batch {s.batch}")
        # Nothing runs beside the loop while it trains (no import thread, no worker process): on CPU its
        # OpenMP threads need every core and the GIL at each operator (benchmarks/RESULTS.md, issue 23)
        with stop_at_once():  # outside fit's own handling (finish the step, save last.pt) a signal stops at once
            return trainer.fit().final["val_acc"]
    finally:
        logger.close()  # also when a second signal skipped the trackers' end
