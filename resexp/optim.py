"""Optimizers and learning-rate schedules by name (conf/optimizer, conf/scheduler).

Every schedule is stepped once per optimizer step. Epoch-wise rules (step, multistep, the seeds'
LambdaLR rules) change only at epoch boundaries, so they behave exactly as when stepped per epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from resexp.registry import Registry

log = logging.getLogger("resexp")

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
SCHEDULERS: Registry[Callable[..., LRScheduler]] = Registry("scheduler")


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    if not no_decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # BN weights/biases and conv/linear biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fused(cfg, device: torch.device) -> dict:
    # by default on CPU too, where SGD's step takes half the time (the same arithmetic up to rounding); a
    # resumed run keeps the kernel it was trained with (pipeline.compute_as_trained)
    fused = cfg.fused if cfg.fused is not None else device.type in ("cuda", "cpu")
    return {"fused": True} if fused else {}


@OPTIMIZERS.register("sgd")
def sgd(groups, cfg, lr, device):
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **_fused(cfg, device))


@OPTIMIZERS.register("adam")
def adam(groups, cfg, lr, device):
    return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, **_fused(cfg, device))


@OPTIMIZERS.register("adamw")
def adamw(groups, cfg, lr, device):
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, **_fused(cfg, device))


def scaled_lr(cfg, batch_size: int) -> float:
    """Linear scaling rule (Goyal et al.): cfg.lr is quoted for cfg.scale_lr_batch images a step."""
    return cfg.lr * batch_size / cfg.scale_lr_batch if cfg.scale_lr_batch else cfg.lr


def build_optimizer(model: nn.Module, cfg, *, batch_size: int, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias)
    return OPTIMIZERS.get(cfg.name)(groups, cfg, scaled_lr(cfg, batch_size), device)


def warmup_length(cfg, epochs: int) -> float:
    """The warm-up, in epochs: scheduler.warmup_epochs, but at most half the run. A warm-up as long as
    the run never reaches optimizer.lr and never decays (`trainer.epochs=2 scheduler.warmup_epochs=50`
    trains at 1-2% of it), and a 1-epoch smoke run with the default 1-epoch warm-up would end at its
    peak rate: such a run warms up over its first half and decays over the second, as a scaled-down
    long run does. Said at start-up with the numbers."""
    warmup = max(float(getattr(cfg, "warmup_epochs", 0) or 0), 0.0)
    if warmup <= epochs / 2:
        return warmup
    from resexp.ranks import is_main_process

    if is_main_process():
        end = _warm_factor(cfg.warmup_start, epochs, warmup)
        ending = "at its peak rate" if end >= 1 else f"still warming up, at {end:.3g} x optimizer.lr"
        log.warning(f"scheduler.warmup_epochs={warmup:g} is more than half the run (trainer.epochs={epochs}): "
                    f"the run would end {ending}{_no_decay(cfg)}; it warms up over the first half instead "
                    f"({epochs / 2:g} epoch{'s' if epochs != 2 else ''}), then follows scheduler={cfg.name}. "
                    f"scheduler.warmup_epochs <= {epochs / 2:g} is kept as given")
    return epochs / 2


def _warm_factor(start: float, epoch: float, warmup: float) -> float:
    return start + (1 - start) * min(epoch / warmup, 1.0) if warmup > 0 else 1.0


def _no_decay(cfg) -> str:
    return " and never decay" if cfg.name == "cosine" else ""


def epoch_rule(rule: Callable[..., Callable[[float], float]]):
    """Turn `rule(cfg, epochs, warmup) -> factor(epoch)` into a per-step LambdaLR builder with warm-up
    (`warmup`: its length in epochs, warmup_length)."""

    def build(optimizer, cfg, epochs: int, steps_per_epoch: int) -> LRScheduler:
        warmup = warmup_length(cfg, epochs)
        factor = rule(cfg, epochs, warmup)
        if warmup > 0:
            base, start = factor, cfg.warmup_start
            factor = lambda e: base(e) * _warm_factor(start, e, warmup)
        return LambdaLR(optimizer, lambda s: factor(s / steps_per_epoch))

    return build


@SCHEDULERS.register("constant")
@epoch_rule
def constant(cfg, epochs, warmup):
    return lambda epoch: 1.0


@SCHEDULERS.register("cosine")
@epoch_rule
def cosine(cfg, epochs, warmup):
    span = max(epochs - warmup, 1e-8)
    floor = cfg.min_lr_factor
    return lambda epoch: floor + (1 - floor) * 0.5 * (
        1 + math.cos(math.pi * min(max(epoch - warmup, 0.0) / span, 1.0))
    )


@SCHEDULERS.register("step")
@epoch_rule
def step(cfg, epochs, warmup):
    return lambda epoch: cfg.gamma ** (int(epoch) // cfg.step_size)


@SCHEDULERS.register("multistep")
@epoch_rule
def multistep(cfg, epochs, warmup):
    milestones = sorted(cfg.milestones)
    return lambda epoch: cfg.gamma ** sum(int(epoch) >= m for m in milestones)


@SCHEDULERS.register("inverse_epoch")
@epoch_rule
def inverse_epoch(cfg, epochs, warmup):
    """Seed R3: lr / (epoch + 1)."""
    return lambda epoch: 1.0 / (int(epoch) + 1)


@SCHEDULERS.register("onecycle")
def onecycle(optimizer, cfg, epochs: int, steps_per_epoch: int) -> LRScheduler:
    return OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=epochs * steps_per_epoch,
        pct_start=cfg.pct_start,
        div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
    )


def build_scheduler(optimizer, cfg, *, epochs: int, steps_per_epoch: int) -> LRScheduler:
    return SCHEDULERS.get(cfg.name)(optimizer, cfg, epochs, max(steps_per_epoch, 1))
