"""One training job: config -> data, model, trainer -> fit -> best checkpoint re-evaluated."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from resexp.config import to_plain
from resexp.data import DATASETS, build_data
from resexp.data.common import is_missing
from resexp.models import ARCHS, BLOCKS, STEMS, build_model
from resexp.models.pretrained import check_pretrained
from resexp.models.summary import count_params
from resexp.optim import OPTIMIZERS, SCHEDULERS
from resexp.reports import write_run_report
from resexp.train import checkpoint
from resexp.train.environment import autocast, configure_determinism, seed_everything, setup, shared_run_dir
from resexp.train.logger import RunLogger
from resexp.train.trainer import Trainer, check_trainer

log = logging.getLogger("resexp")


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def outputs_root(run_dir: Path) -> Path:
    """`outputs/` for `outputs/<date>/<time>` and `outputs/multirun/<date>/<time>/<n>`."""
    for parent in run_dir.resolve().parents:
        if parent.name == "outputs":
            return parent
    return run_dir.resolve().parent.parent


def check_choices(cfg: DictConfig, device: torch.device) -> None:
    """Every registered name and trainer choice, before a data set is read or a model built: a typo
    fails at once rather than after minutes of loading."""
    if not is_missing(cfg.data, "name"):  # a missing name gets its own message from build_data
        DATASETS.get(cfg.data.name)
    ARCHS.get(cfg.model.arch)
    if "stem" in cfg.model:  # resnets only
        STEMS.get(cfg.model.stem)
    if cfg.model.get("block") is not None:
        BLOCKS.get(cfg.model.block.name)
    OPTIMIZERS.get(cfg.optimizer.name)
    SCHEDULERS.get(cfg.scheduler.name)
    check_trainer(cfg.trainer)
    autocast(device, cfg.trainer.precision)
    if cfg.model.pretrained:
        check_pretrained(cfg.model.pretrained, cfg.model.name, cfg.model.arch)


def run(cfg: DictConfig, run_dir: Path | None = None) -> float:
    """Train as the config says; returns the best checkpoint's validation accuracy."""
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    composed = to_plain(cfg)  # as the user asked for it, before data fills in the gaps
    env = setup(cfg.trainer)
    check_choices(cfg, env.device)
    run_dir = shared_run_dir(run_dir, env)  # DDP: every rank works in rank 0's directory
    seed_everything(cfg.seed)
    configure_determinism(cfg.trainer.deterministic, env.device)

    resume_path = None
    if cfg.trainer.resume == "auto":
        own = run_dir / "checkpoints" / "last.pt"  # a requeued job (SLURM) continues in its own directory
        resume_path = own if own.is_file() else \
            checkpoint.find_auto(composed, outputs_root(run_dir), exclude=run_dir.resolve())
        if resume_path is None and env.is_main:
            log.info("trainer.resume=auto: no earlier run with this config has a last.pt; starting fresh")
    elif cfg.trainer.resume:
        resume_path = checkpoint.resolve(cfg.trainer.resume, outputs_root(run_dir))
    finetune = bool(cfg.trainer.finetune_from) and resume_path is None  # a resumed run has its own weights
    if finetune and not Path(cfg.trainer.finetune_from).expanduser().is_file():
        raise checkpoint.CheckpointError(f"trainer.finetune_from: no such file: {cfg.trainer.finetune_from}")

    data = build_data(cfg.data, device=env.device, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    info = data.info
    cfg.model.num_classes = cfg.model.num_classes or info.num_classes
    cfg.model.in_channels = cfg.model.in_channels or info.in_channels
    model = build_model(cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
                        image_size=info.image_size)
    if finetune:
        fresh = checkpoint.load_backbone(model, Path(cfg.trainer.finetune_from).expanduser())
        if env.is_main:
            log.info(f"fine-tuning from {cfg.trainer.finetune_from}; freshly initialised: {', '.join(fresh) or 'none'}")

    meta = {
        "name": cfg.model.name, "num_classes": int(cfg.model.num_classes), "in_channels": int(cfg.model.in_channels),
        "image_size": info.image_size, "class_names": list(info.class_names),
        "mean": list(info.mean) if info.mean else None, "std": list(info.std) if info.std else None,
        "params": count_params(model),
    }
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved = run_dir / ".hydra" / "config.yaml"
        if not saved.exists():  # Python API runs: the same record a Hydra run keeps (resume=auto reads it)
            saved.parent.mkdir(exist_ok=True)
            saved.write_text(OmegaConf.to_yaml(composed))
        if data.split is not None:
            (run_dir / "data_split.json").write_text(json.dumps(data.split, indent=1))
        if data.skipped:
            log.warning(f"{data.skipped} unreadable files were skipped (data.on_bad_file=skip)")
        log.info(f"model {cfg.model.name}: {meta['params']:,} parameters; data {cfg.data.name}: "
                 f"{data.train.num_samples * env.world_size} train / {data.val.num_samples * env.world_size} val "
                 f"images, {meta['num_classes']} classes; device {env.device}; run dir {run_dir}")

    trainer = Trainer(cfg, model, data, env, run_dir, meta)
    if resume_path is not None:
        trainer.load_last(resume_path)
        if env.is_main:
            log.info(f"resumed from {resume_path} at epoch {trainer.epoch + 1}, batch {trainer.batch}")
    # purge_step drops TensorBoard points of steps that the resumed run will write again
    logger = trainer.logger = RunLogger(run_dir, enabled=env.is_main, progress=cfg.trainer.progress,
                                        purge_step=trainer.global_step if resume_path else None)
    logger.config(cfg)
    try:
        trainer.fit()
        final, val = final_evaluation(trainer, collect=cfg.trainer.report)
        # figures, model summary, safetensors from that same validation pass; {"per_class": ...}
        report = write_run_report(trainer, final, val) if cfg.trainer.report else {}
        extra = {"resumed_from": str(resume_path)} if resume_path else {}
        metrics = trainer.write_metrics(status="completed", **extra, **report)
        logger.hparams(cfg, final)
        return metrics["best"]["val_acc"]
    except Exception as e:
        trainer.write_metrics(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        logger.close()


def final_evaluation(trainer: Trainer, collect: bool = False) -> tuple[dict, dict]:
    """Reload best.pt, evaluate it on val (and test), and make that the reported best.

    Returns the best metrics and the validation result (with this rank's predictions if collect)."""
    best_path = trainer.ckpt_dir / "best.pt"
    if trainer.env.distributed:
        torch.distributed.barrier()  # rank 0 has finished writing best.pt
    state = checkpoint.load(best_path, map_location=trainer.device)
    model = trainer.eval_model()
    model.load_state_dict(state["model"])
    val = trainer.evaluate(model, trainer.data.val, collect=collect)
    best = {**state["best"], "val_loss": val["loss"], "val_acc": val["acc"], "val_acc5": val["acc5"]}
    if trainer.data.test is not None:
        test = trainer.evaluate(model, trainer.data.test)
        best.update(test_loss=test["loss"], test_acc=test["acc"], test_acc5=test["acc5"])
    trainer.best = best
    if trainer.env.is_main:
        log.info(f"best epoch {best['epoch']}: val acc {best['val_acc']:.2%} loss {best['val_loss']:.4f}"
                 + (f"; test acc {best['test_acc']:.2%}" if "test_acc" in best else ""))
    return best, val
