"""The run report: what every finished run leaves next to its checkpoints (rank 0 writes).

    curves.png            train/val loss and accuracy per epoch, best epoch marked
    confusion_matrix.png  the best model on the validation set (also TensorBoard: val/confusion_matrix)
    predictions.png       a grid of validation images with predicted / true class (also TensorBoard)
    model_summary.txt     layer table and parameter counts
    best.safetensors      the best weights; model.json says how to rebuild and feed the network

`write_run_report(trainer, final, val)` returns `{"per_class": {...}}` for metrics.json.
"""

from __future__ import annotations

import logging
import time

import torch

from resexp.runs import RunPaths

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


def write_run_report(trainer, final: dict, val: dict) -> dict:
    """Write the report files into the run directory from final_evaluation's validation pass of the
    best model (`val`, collected with predictions), and return {"per_class": ...} for metrics.json.

    Call it on every rank: under DDP each rank holds its shard's predictions and rank 0 gathers them.
    """
    t0 = time.perf_counter()
    model = trainer.eval_model()
    probs, targets = _gather(val["probs"], val["targets"], trainer.env.distributed)
    if not trainer.env.is_main:
        return {}

    from resexp.reports import figures
    from resexp.reports.metrics import confusion_matrix, per_class

    paths, facts = RunPaths(trainer.run_dir), trainer.facts
    names = facts.labels
    cm = confusion_matrix(probs.argmax(1), targets, facts.num_classes)
    out = {"per_class": per_class(cm, names)}
    writer = getattr(trainer.logger, "writer", None)
    step = int(final.get("epoch") or trainer.state.epoch)

    def save(fig, name: str, tag: str | None = None) -> None:
        rgb = figures.render(fig)
        png = figures.save_png(rgb, paths.report_file(name))
        if writer is not None and tag:  # as SummaryWriter.add_figure would, without drawing or encoding again
            from torch.utils.tensorboard.summary import Summary

            image = Summary.Image(height=rgb.shape[0], width=rgb.shape[1], colorspace=3, encoded_image_string=png)
            writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    _attempt("curves.png", lambda: save(figures.curves(trainer.state.history, final.get("epoch")), "curves.png"))
    _attempt("confusion_matrix.png", lambda: save(
        figures.confusion(cm, names, title=f"val, best epoch {final.get('epoch')}:"), "confusion_matrix.png",
        "val/confusion_matrix"))
    _attempt("predictions.png", lambda: save(_prediction_grid(trainer, probs, targets, names), "predictions.png",
                                             "val/predictions"))
    _attempt("model_summary.txt", _write_summary, trainer, model)
    _attempt("best.safetensors / model.json", _write_export, trainer, model, final)
    log.info(f"run report written to {paths.root} ({time.perf_counter() - t0:.1f}s)")
    return out


def prefetch() -> None:
    """Import what the report draws with (matplotlib: about half a second) in a background thread while
    the run trains: the training loop spends its time in torch's kernels, which let go of the GIL."""
    import threading

    def load() -> None:
        try:
            from resexp.reports import export, figures, metrics  # noqa: F401
        except Exception:  # noqa: BLE001 - the report imports them again, and says what failed
            pass

    threading.Thread(target=load, name="resexp-report-imports", daemon=True).start()


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


def _prediction_grid(trainer, probs: torch.Tensor, targets: torch.Tensor, names: list[str]):
    """predictions.png: rank 0's first validation images with the predictions evaluate() made for
    them (its collected outputs start with rank 0's shard, in loader order): no second forward pass."""
    from resexp.reports import figures

    x = _first_images(trainer.data.val, min(GRID, len(targets)))
    k = len(x)
    facts = trainer.facts
    return figures.predictions(x, probs[:k], targets[:k], names, facts.mean, facts.std, title="val:")


def _write_summary(trainer, model) -> None:
    from resexp.models import summary_text

    f = trainer.facts
    text = summary_text(model, f.name, f.num_classes, f.in_channels, f.image_size)
    RunPaths(trainer.run_dir).report_file("model_summary.txt").write_text(text + "\n")


def _write_export(trainer, model, final: dict) -> None:
    from resexp.config import to_plain
    from resexp.reports.export import write_export

    # final_evaluation loaded best.pt into eval_model(): these are the best weights
    write_export(trainer.run_dir, model.state_dict(), to_plain(trainer.cfg), trainer.facts.as_dict(), final)
