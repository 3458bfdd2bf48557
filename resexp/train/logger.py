"""What a run tells the world as it trains: TensorBoard events, the experiment trackers the `logger`
config chooses (resexp/trackers/) and one console line per epoch (metrics.json is resexp.run_dir.write_metrics).
The Trainer is built with it as one of its callbacks (callbacks.py).

Only the main process (rank 0) writes; the others get a logger that does nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from resexp.errors import error_line
from resexp.records.epoch import EpochRecord
from resexp.run_dir import RunPaths
from resexp.trackers import TrackedRun, Tracker, run_files
from resexp.train.callbacks import Callback
from resexp.train.hparams import default_composition, shown_hparams

log = logging.getLogger("resexp")


def shows_progress(enabled: bool, progress: bool | None) -> bool:
    """trainer.progress: a progress bar per epoch; None: when stderr is a terminal."""
    return enabled and (sys.stderr.isatty() if progress is None else progress)


class RunLogger(Callback):
    """`config`: the run's config, for TensorBoard's Text page; `resumed`: the run continues from a
    last.pt, so TensorBoard's points after that step are dropped (the run writes them again)."""

    def __init__(self, run_dir: Path, enabled: bool, config=None, resumed: bool = False,
                 tensorboard: bool = True, trackers: list[Tracker] = ()):
        self.run_dir, self.enabled, self.run_config, self.resumed = run_dir, enabled, config, resumed
        self.tensorboard = enabled and tensorboard
        self.writer = None  # opened when fit starts: where a resumed run stands is known then
        self.trackers: list[Tracker] = list(trackers) if enabled else []
        self.started: list[Tracker] = []  # the trackers with an open run
        self.last_validated: EpochRecord | None = None  # the latest epoch with validation scores

    def open(self, purge_step: int | None = None) -> None:
        if self.tensorboard and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(RunPaths(self.run_dir).tensorboard), purge_step=purge_step)
            if self.run_config is not None:
                self.config(self.run_config)

    # --- the Trainer's callbacks ------------------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        self.open(purge_step=trainer.result.state.global_step + 1 if self.resumed else None)

    def on_epoch_end(self, trainer, record: EpochRecord, improved: bool | None) -> None:
        r = trainer.result
        if r.step_losses:
            self.step_losses([step for step, _ in r.step_losses], [loss for _, loss in r.step_losses])
        self.epoch(record, r.epochs, bool(improved))

    def on_fit_end(self, trainer) -> None:
        self.hparams(trainer.result.final)
        self.finish("completed", best=trainer.result.final)

    def on_exception(self, trainer, error: BaseException) -> None:
        r = trainer.result
        self.finish(r.status, error_line(r.error or error))

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

    def epoch(self, record: EpochRecord, epochs: int, is_best: bool) -> None:
        """A finished epoch: TensorBoard scalars, the trackers' metrics (under the same names) and the
        console line."""
        values = record.scalars()
        self.scalars(values, step=record.epoch)
        if record.validated:
            self.last_validated = record
        self._each("log_epoch", values, record.epoch)
        if self.enabled:
            log.info(record.line(epochs) + ("  *best" if is_best else ""))

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
        shown = shown_hparams(config, default_composition(config, overrides, paths.root), overrides)
        # No experiment summary: TensorBoard then builds the table from every run's own start info and
        # lists the keys that differ between the runs first (SummaryWriter.add_hparams writes one per
        # run, and TensorBoard shows the first run's columns).
        _, start, end = hparams(shown, {})
        data = HParamsPluginData.FromString(start.value[0].metadata.plugin_data.content)
        data.session_start_info.group_name = run_name(self.run_dir, current_sweep())  # the row's name
        start.value[0].metadata.plugin_data.content = data.SerializeToString()
        last = self.last_validated or EpochRecord(epoch=best["epoch"])
        values = {"best/val_acc": best["val_acc"], "best/val_loss": best["val_loss"], "best/val_acc5": best["val_acc5"],
                  "best/epoch": best["epoch"], "val/acc": last.val_acc, "val/loss": last.val_loss,
                  "val/acc5": last.val_acc5}
        with SummaryWriter(log_dir=str(paths.tensorboard / "hparams")) as row:
            row.file_writer.add_summary(start)
            for tag, value in values.items():
                if value is not None:
                    row.add_scalar(tag, value, last.epoch)
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
