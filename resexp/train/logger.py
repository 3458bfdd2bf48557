"""What a run tells the world as it trains: TensorBoard events and one console line per epoch
(metrics.json is resexp.runs.write_metrics).

Only the main process (rank 0) writes; the others get a logger that does nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from resexp.config import to_plain
from resexp.runs import RunPaths

log = logging.getLogger("resexp")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool, progress: bool | None, purge_step: int | None = None):
        self.run_dir = run_dir
        self.enabled = enabled
        self.progress = enabled and (sys.stderr.isatty() if progress is None else progress)
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(RunPaths(run_dir).tensorboard), purge_step=purge_step)

    def bar(self, total: int, initial: int, desc: str):
        return tqdm(total=total, initial=initial, desc=desc, leave=False, disable=not self.progress,
                    unit="batch", dynamic_ncols=True)

    def config(self, cfg) -> None:
        if self.writer:
            # TensorBoard renders text as markdown: indent four spaces to keep YAML as a code block.
            text = "\n".join("    " + line for line in OmegaConf.to_yaml(cfg).splitlines())
            self.writer.add_text("config", text, 0)

    def scalars(self, values: dict[str, float | None], step: int) -> None:
        if self.writer:
            for tag, value in values.items():
                if value is not None:
                    self.writer.add_scalar(tag, value, step)

    def step_losses(self, steps: list[int], losses: list[float]) -> None:
        if self.writer:
            for step, loss in zip(steps, losses, strict=True):
                self.writer.add_scalar("train/loss_step", loss, step)

    def epoch(self, row: dict, epochs: int, is_best: bool) -> None:
        """A finished epoch's row (the trainer's history): TensorBoard scalars and the console line."""
        self.scalars({
            "train/loss": row["train_loss"], "train/acc": row["train_acc"], "val/loss": row["val_loss"],
            "val/acc": row["val_acc"], "val/acc5": row["val_acc5"], "lr": row["lr"], "throughput": row["images_per_s"],
        }, step=row["epoch"])
        if not self.enabled:
            return
        val = ""
        if row.get("val_acc") is not None:
            val = f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%} acc5 {row['val_acc5']:.2%}"
        log.info(
            f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}{val}"
            f"  lr {row['lr']:.3g}  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s"
            + ("  *best" if is_best else "")
        )

    def hparams(self, cfg, best: dict) -> None:
        if self.writer:
            params = flatten(to_plain(cfg))  # enums as their strings
            metrics = {f"hparam/{k}": v for k, v in best.items() if isinstance(v, (int, float)) and k != "epoch"}
            self.writer.add_hparams(params, metrics, run_name=".")

    def close(self) -> None:
        if self.writer:
            self.writer.close()
