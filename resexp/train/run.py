"""One training job, as a sequence of named steps: resolve the resume, build data and model, prepare
the run directory, fit, report (best.pt re-evaluated, the run report, metrics.json).

The config the caller passed is never written into: what the data adds (class count, channels)
goes into a copy, the run's config, that checkpoints and TensorBoard keep."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from resexp import provenance
from resexp.config import checked, to_plain
from resexp.data import build_data
from resexp.errors import CheckpointError, ConfigError, error_line
from resexp.models import build_model
from resexp.models.layer_table import count_params
from resexp.models.pretrained import check_pretrained, existing_file, load_backbone, read_state_dict
from resexp.reports.run import prefetch, write_run_report
from resexp.runs import RunFacts, RunPaths, claim_run_dir, outputs_root, release_run_dir
from resexp.trackers import TrackedRun, build_trackers, check_trackers, current_sweep
from resexp.train import checkpoint
from resexp.train.environment import Env, autocast, configure_determinism, seed_everything, setup, shared_run_dir
from resexp.train.evaluation import final_evaluation
from resexp.train.logger import RunLogger
from resexp.train.signals import stop_at_once
from resexp.train.stopped import EVALUATION, REPORT, TRAINING, record_stop
from resexp.train.trainer import Trainer

log = logging.getLogger("resexp")


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def check_choices(cfg: DictConfig, device: torch.device) -> None:
    """The config's bounds, names and rules (its schemas' own checks), the trackers, precision on this
    device and the pretrained weights, before a data set is read or a model built: a typo fails at
    once rather than after minutes of loading."""
    checked(cfg)
    check_trackers(cfg.get("logger"))
    autocast(device, cfg.trainer.precision)
    if cfg.model.pretrained:
        check_pretrained(cfg.model.pretrained, cfg.model.name, cfg.model.arch)


def run(cfg: DictConfig, run_dir: Path | None = None, on_validated=()) -> float:
    """Train as the config says; returns the best checkpoint's validation accuracy. `on_validated`:
    callables given (epoch, the epoch's metrics row) after each validation (a search's pruner)."""
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    composed = to_plain(cfg)  # as the user asked for it, before data fills in the gaps
    env = setup(cfg.trainer)
    check_choices(cfg, env.device)
    paths = RunPaths(shared_run_dir(run_dir, env))  # DDP: every rank works in rank 0's directory
    # rank 0 holds the directory until the run ends; a second run started at the same moment stops
    claimed = env.is_main and claim_run_dir(paths.root, cfg.trainer.resume)
    try:
        seed_everything(cfg.seed)
        configure_determinism(cfg.trainer.deterministic, env.device)

        resume_path = resolve_resume(cfg, composed, paths, env)
        run_cfg, data, model, facts = build(cfg, env, finetune=resume_path is None)
        prepare_run_dir(paths, composed, data, facts, env, cfg.data.name)
        trainer = Trainer(run_cfg, model, data, env, paths.root, facts)
        trainer.on_validated.extend(on_validated)
        return fit_and_report(trainer, run_cfg, resume_path)
    finally:
        if claimed:
            release_run_dir(paths.root)


def resolve_resume(cfg: DictConfig, composed: dict, paths: RunPaths, env: Env) -> Path | None:
    """The last.pt to continue from (trainer.resume), or None; a finetune_from file checked to exist."""
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
        check_something_to_train(resume_path, cfg.trainer.epochs, cfg.trainer.resume)
    if cfg.trainer.finetune_from and resume_path is None:  # before the data is read: fail fast
        existing_file(cfg.trainer.finetune_from, "trainer.finetune_from")
    return resume_path


def check_something_to_train(last: Path, epochs: int, resume: str) -> None:
    """A resume of a run that has trained trainer.epochs already would make a run directory with
    nothing trained in it: stopped, saying how to train it longer."""
    held = checkpoint.read(last, mmap=True)
    done = int(held.get("epoch", 0)) if isinstance(held, dict) and not held.get("batch") else None
    if done is not None and done >= epochs:
        run_dir = last.parent.parent
        raise CheckpointError(
            f"trainer.resume={resume}: the run in {run_dir} has trained {done} epochs and trainer.epochs={epochs} "
            f"leaves nothing to train; to train it longer, resume it with more epochs: "
            f"trainer.epochs={done + max(epochs, 1)} trainer.resume={run_dir}")


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


def start_tracking(logger: RunLogger, cfg: DictConfig, trainer: Trainer, resume_path: Path | None) -> None:
    """run_info.json and the trackers' runs (rank 0); a resumed run continues the runs it recorded."""
    env, paths = trainer.env, RunPaths(trainer.run_dir)
    if not env.is_main:
        return
    info = provenance.collect(str(env.device), env.world_size)
    previous = provenance.original(paths, resume_path).get("trackers", {}) if resume_path else {}
    tracked = TrackedRun(paths.root, outputs_root(paths.root), to_plain(cfg), info,
                         provenance.tags(info, cfg.model.name, cfg.data.name), current_sweep(), previous)
    provenance.record(paths, info, logger.start(tracked), resume_path)


def fit_and_report(trainer: Trainer, cfg: DictConfig, resume_path: Path | None) -> float:
    """Resume if asked, fit, re-evaluate best.pt, write the run report; metrics.json says how it ended
    (completed, failed or interrupted: stopped.py)."""
    env = trainer.env
    if resume_path is not None:
        trainer.resume(resume_path)
        if env.is_main:
            log.info(f"resumed from {resume_path} at epoch {trainer.state.epoch + 1}, batch {trainer.state.batch}")
    # purge_step drops TensorBoard points of the steps after last.pt's, which the resumed run writes again
    loggers = cfg.get("logger")
    logger = trainer.logger = RunLogger(trainer.run_dir, enabled=env.is_main, progress=cfg.trainer.progress,
                                        purge_step=trainer.state.global_step + 1 if resume_path else None,
                                        tensorboard=loggers is None or loggers.get("tensorboard") is not None,
                                        trackers=build_trackers(loggers) if env.is_main else [])
    logger.config(cfg)
    stage = TRAINING
    try:
        start_tracking(logger, cfg, trainer, resume_path)
        if cfg.trainer.report and env.is_main:
            prefetch()
        with stop_at_once():  # outside fit's own handling (finish the step, save last.pt) a signal stops at once
            trainer.fit()
            stage = EVALUATION
            final, val = final_evaluation(trainer, collect=cfg.trainer.report)
            stage = REPORT
            # figures, model summary, safetensors from that same validation pass; {"per_class": ...}
            report = write_run_report(trainer, final, val) if cfg.trainer.report else {}
            extra = {"resumed_from": str(resume_path)} if resume_path else {}
            logger.hparams(final)
            metrics = trainer.write_metrics(status="completed", **extra, **report)
            logger.finish("completed", best=final)
        return metrics["best"]["val_acc"]
    except (Exception, KeyboardInterrupt) as e:
        status, error = record_stop(trainer, e, stage)  # metrics.json as the files on disk are
        logger.finish(status, error_line(error))
        if error is e:
            raise
        raise error from e
    finally:
        logger.close()
