"""The run report: what every finished run leaves next to its checkpoints (rank 0 writes).

    curves.png            train/val loss and accuracy per epoch, best epoch marked
    confusion_matrix.png  the best model on the validation set (also TensorBoard: val/confusion_matrix)
    predictions.png       a grid of validation images with predicted / true class (also TensorBoard)
    model_summary.txt     layer table and parameter counts
    best.safetensors      the best weights; model.json says how to rebuild and feed the network

`write_run_report(result, model, val_loader, config, writer, distributed)` returns `{"per_class": {...}}`
for metrics.json (resexp/train/callbacks.py's RunReport calls it at the end of a run).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from resexp.records.facts import RunFacts
from resexp.run_dir import RunPaths

if TYPE_CHECKING:
    from resexp.train.result import RunResult

log = logging.getLogger("resexp")

GRID = 16  # images in predictions.png


def _gather(probs: torch.Tensor, targets: torch.Tensor, distributed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's validation predictions, concatenated (each rank holds its own shard)."""
    if not distributed:
        return probs, targets
    import torch.distributed as dist

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (probs, targets))
    return torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts])


def _attempt(what: str, fn, *args) -> None:
    """A report file that cannot be written is a warning: the run itself has succeeded."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001
        log.warning(f"run report: could not write {what}: {type(e).__name__}: {e}")


def write_run_report(result: RunResult, model, val_loader, config: dict, writer=None,
                     distributed: bool = False) -> dict:
    """Write the report files into the run directory from final_evaluation's validation pass of the
    best model (`result.val`, collected with predictions; `model` holds best.pt's weights), and return
    {"per_class": ...} for metrics.json. `writer`: TensorBoard's, which gets the figures too.

    Call it on every rank: under DDP each rank holds its shard's predictions and rank 0 gathers them.
    """
    t0 = time.perf_counter()
    final, val = result.final, result.val
    probs, targets = _gather(val["probs"], val["targets"], distributed)
    if not result.is_main:
        return {}

    from resexp.reports import figures
    from resexp.reports.export import write_export
    from resexp.reports.metrics import confusion_matrix, per_class

    paths, facts = result.paths, result.facts
    names = facts.labels
    cm = confusion_matrix(probs.argmax(1), targets, facts.num_classes)
    out = {"per_class": per_class(cm, names)}
    step = int(final.get("epoch") or result.state.epoch)

    def save(fig, name: str, tag: str | None = None) -> None:
        rgb = figures.render(fig)
        png = figures.save_png(rgb, paths.report_file(name))
        if writer is not None and tag:  # as SummaryWriter.add_figure would, without drawing or encoding again
            from torch.utils.tensorboard.summary import Summary

            image = Summary.Image(height=rgb.shape[0], width=rgb.shape[1], colorspace=3, encoded_image_string=png)
            writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    _attempt("curves.png", lambda: save(figures.curves(result.state.history, final.get("epoch")), "curves.png"))
    _attempt("confusion_matrix.png", lambda: save(
        figures.confusion(cm, names, title=f"val, best epoch {final.get('epoch')}:"), "confusion_matrix.png",
        "val/confusion_matrix"))
    _attempt("predictions.png", lambda: save(_prediction_grid(val_loader, facts, probs, targets), "predictions.png",
                                             "val/predictions"))
    _attempt("model_summary.txt", _write_summary, paths, facts, model)
    # the model holds best.pt's weights (final_evaluation loaded them)
    _attempt("best.safetensors / model.json", write_export, paths.root, model.state_dict(), config, facts, final)
    log.info(f"run report written to {paths.root} ({time.perf_counter() - t0:.1f}s)")
    return out


def _first_images(loader, n: int) -> torch.Tensor:
    """The first n images of this rank's validation loader (the evaluation order: fixed, unshuffled)."""
    loader.set_epoch(0)
    xs, have = [], 0
    for x, _ in loader:
        xs.append(x[: n - have].cpu())
        have += len(xs[-1])
        if have >= n:
            break
    return torch.cat(xs)


def _prediction_grid(val_loader, facts: RunFacts, probs: torch.Tensor, targets: torch.Tensor):
    """predictions.png: rank 0's first validation images with the predictions evaluate() made for
    them (its collected outputs start with rank 0's shard, in loader order): no second forward pass."""
    from resexp.reports import figures

    x = _first_images(val_loader, min(GRID, len(targets)))
    k = len(x)
    return figures.predictions(x, probs[:k], targets[:k], facts.labels, facts.mean, facts.std, title="val:")


def _write_summary(paths: RunPaths, f: RunFacts, model) -> None:
    from resexp.models import summary_text

    text = summary_text(model, f.name, f.num_classes, f.in_channels, f.image_size)
    paths.report_file("model_summary.txt").write_text(text + "\n")
