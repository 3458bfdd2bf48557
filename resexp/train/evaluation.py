"""Evaluation: the one loop that validation, the final evaluation of best.pt and
`python -m resexp.evaluate` run, and the one flip test-time augmentation they and
`resexp.inference` apply (trainer.tta_flip)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from resexp.records.epoch import scores
from resexp.train import checkpoint
from resexp.train.metrics import Accumulator

log = logging.getLogger("resexp")


def flip_tta(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flip: bool) -> torch.Tensor:
    """The logits for a batch [N, C, H, W]; with flip, averaged with those of its mirror image."""
    logits = forward(x)
    return (logits + forward(x.flip(3))) / 2 if flip else logits


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, *, tta_flip: bool = False, autocast=None,
             forward: Callable | None = None, limit: int | None = None, collect: bool = False,
             memory_format: torch.memory_format = torch.preserve_format) -> dict:
    """Loss, top-1, top-5 and count over the loader (summed over DDP ranks); with collect, also this
    rank's softmax probabilities and targets. `forward` is the model as it runs (e.g. compiled)."""
    model.eval()
    forward = forward or model
    autocast = autocast or nullcontext()
    acc = Accumulator(device)
    probs, targets = [], []
    loader.set_epoch(0)
    for i, (x, y) in enumerate(loader):
        if limit and i >= limit:
            break
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with autocast:
            logits = flip_tta(forward, x, tta_flip)
        logits = logits.float()
        acc.update(F.cross_entropy(logits, y), logits, y)
        if collect:
            probs.append(logits.softmax(1).cpu())
            targets.append(y.cpu())
    out = acc.compute()
    if collect:
        out["probs"] = torch.cat(probs) if probs else torch.empty(0)
        out["targets"] = torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)
    return out


def final_evaluation(trainer, collect: bool = False) -> tuple[dict, dict]:
    """Reload best.pt, evaluate it on val (and test), and make that the reported best (trainer.result's
    `final` and `val`, and the monitor's best, which metrics.json writes).

    Returns the best metrics and the validation result (with this rank's predictions if collect)."""
    result = trainer.result
    if trainer.env.distributed:
        torch.distributed.barrier()  # rank 0 has finished writing best.pt
    state = checkpoint.load(result.paths.best, map_location=trainer.env.device)
    model = trainer.eval_model()
    model.load_state_dict(state["model"])
    val = trainer.evaluate(model, trainer.data.val, collect=collect)
    best = {**state["best"], **scores("val", val)}
    if trainer.data.test is not None:
        best.update(scores("test", trainer.evaluate(model, trainer.data.test)))
    result.state.monitor.best = result.final = best
    result.val = val
    if trainer.env.is_main:
        log.info(f"best epoch {best['epoch']}: val acc {best['val_acc']:.2%} loss {best['val_loss']:.4f}"
                 + (f"; test acc {best['test_acc']:.2%}" if "test_acc" in best else ""))
    return best, val
