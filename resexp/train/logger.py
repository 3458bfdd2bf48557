"""What a run tells the world as it trains: TensorBoard events, the experiment trackers the `logger`
config chooses (resexp/trackers/) and one console line per epoch (metrics.json is resexp.runs.write_metrics).

Only the main process (rank 0) writes; the others get a logger that does nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from resexp.runs import RunPaths
from resexp.trackers import TrackedRun, Tracker, run_files
from resexp.train.hparams import default_composition, shown_hparams

log = logging.getLogger("resexp")


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool, progress: bool | None, purge_step: int | None = None,
                 tensorboard: bool = True, trackers: list[Tracker] = ()):
        self.run_dir = run_dir
        self.enabled = enabled
        self.progress = enabled and (sys.stderr.isatty() if progress is None else progress)
        self.writer = None
        self.trackers: list[Tracker] = list(trackers) if enabled else []
        self.started: list[Tracker] = []  # the trackers with an open run
        self.last_validated: dict | None = None  # the latest epoch's row with validation scores
        if enabled and tensorboard:
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
        """A finished epoch's row (the trainer's history): TensorBoard scalars, the trackers' metrics
        (under the same names) and the console line."""
        values = {
            "train/loss": row["train_loss"], "train/acc": row["train_acc"], "val/loss": row["val_loss"],
            "val/acc": row["val_acc"], "val/acc5": row["val_acc5"], "train/lr": row["lr"],
            "train/throughput": row["images_per_s"],
        }
        self.scalars(values, step=row["epoch"])
        if row.get("val_acc") is not None:
            self.last_validated = row
        self._each("log_epoch", {k: v for k, v in values.items() if v is not None}, row["epoch"])
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

    def hparams(self, best: dict) -> None:
        """The HParams dashboard's row for this run: the keys that matter (resexp/train/hparams.py) as
        its hyperparameters, and as its metrics the validation scores of the last epoch and of the
        re-evaluated best.pt. The row is a run of its own, tb/hparams/: TensorBoard takes every scalar
        under a row's run as a metric, sorted by name, and ticks the first five, which under tb/ were
        train/* (a final lr of 0 among them). Named by what differs in a sweep (`optimizer.lr=0.05 · ...`).
        The best epoch is also marked on the val/acc curve (the run tb/best)."""
        if not self.writer:
            return
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        from resexp.trackers import current_sweep, run_name

        paths = RunPaths(self.run_dir)
        overrides = list(OmegaConf.load(paths.overrides)) if paths.overrides.is_file() else []
        config = OmegaConf.to_container(OmegaConf.load(paths.config))
        shown = shown_hparams(config, default_composition(config, overrides), overrides)
        # No experiment summary: TensorBoard then builds the table from every run's own start info and
        # lists the keys that differ between the runs first (SummaryWriter.add_hparams writes one per
        # run, and TensorBoard shows the first run's columns).
        _, start, end = hparams(shown, {})
        data = HParamsPluginData.FromString(start.value[0].metadata.plugin_data.content)
        data.session_start_info.group_name = run_name(self.run_dir, current_sweep())  # the row's name
        start.value[0].metadata.plugin_data.content = data.SerializeToString()
        last = self.last_validated or {}
        values = {"best/val_acc": best["val_acc"], "best/val_loss": best["val_loss"], "best/val_acc5": best["val_acc5"],
                  "best/epoch": best["epoch"], "val/acc": last.get("val_acc"), "val/loss": last.get("val_loss"),
                  "val/acc5": last.get("val_acc5")}
        with SummaryWriter(log_dir=str(paths.tensorboard / "hparams")) as row:
            row.file_writer.add_summary(start)
            for tag, value in values.items():
                if value is not None:
                    row.add_scalar(tag, value, last.get("epoch", best["epoch"]))
            row.file_writer.add_summary(end)
        with SummaryWriter(log_dir=str(paths.tensorboard / "best")) as marker:
            for name in ("loss", "acc", "acc5"):
                marker.add_scalar(f"val/{name}", best[f"val_{name}"], best["epoch"])

    # --- experiment trackers ------------------------------------------------------------------
    def start(self, run: TrackedRun) -> dict:
        """Open each tracker's run; returns their ids by tracker (run_info.json keeps them). A tracker
        that cannot start stops the run before training (the ones already open end as failed)."""
        ids = {}
        for tracker in self.trackers:
            try:
                ids[tracker.name] = tracker.start(run)
            except Exception:
                self.finish("failed", f"logger={tracker.name} could not start")
                raise
            self.started.append(tracker)
        return ids

    def finish(self, status: str, error: str | None = None, best: dict | None = None) -> None:
        """End the trackers' runs: completed ones with the best metrics and the run directory's files.
        A tracker's run always ends, also when some of the files could not be stored (a full disk):
        they are named, in a warning and in the tracker's run."""
        if best is not None:
            self._each("log_best", {k: v for k, v in best.items() if isinstance(v, (int, float))}, keep=True)
            for tracker, missing in self._each("log_artifacts", run_files(self.run_dir), self.run_dir, keep=True):
                if missing:
                    shown = "; ".join(f"{name} ({why})" for name, why in list(missing.items())[:5])
                    log.warning(f"logger={tracker.name}: {len(missing)} of the run's files were not stored: {shown}"
                                + (f"; and {len(missing) - 5} more" if len(missing) > 5 else ""))
        self._each("finish", status, error)
        self.started.clear()

    def _each(self, method: str, *args, keep: bool = False) -> list[tuple[Tracker, object]]:
        """Call a method of every open tracker; returns (tracker, result) of those that answered. A
        tracker that fails (its server is gone) is dropped with a warning, unless `keep` (its run is
        still to be ended): losing the tracker's record must not cost the training run."""
        results = []
        for tracker in list(self.started):
            try:
                results.append((tracker, getattr(tracker, method)(*args)))
            except Exception as e:  # noqa: BLE001
                log.warning(f"logger={tracker.name}: {method} failed ({type(e).__name__}: {e})"
                            + ("" if keep else "; it records nothing more for this run"))
                if not keep:
                    self.started.remove(tracker)
        return results

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        if self.started:  # left open by an interruption (a second Ctrl-C) that skipped finish
            self.finish("interrupted")
