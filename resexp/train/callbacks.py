"""What a run does around its training loop, as callbacks the Trainer is built with (the shape of
Lightning's and lightning-hydra-template's): checkpoints (checkpoint.py), logging (logger.py), and
here the end-of-run steps, metrics.json and user hooks.

The Trainer calls each hook on every callback, in the order it was given them:

    on_fit_start(trainer)                          before the first epoch (a resumed run: after resuming)
    on_validation_end(trainer, record, improved)   after a validation; improved: the new best
    on_epoch_end(trainer, record, improved)        after an epoch (improved None: not validated)
    on_fit_end(trainer)                            after training; `stage` names the step (stopped.py)
    on_exception(trainer, error)                   the run stopped: error is what stopped it

Per epoch, never per step. A callback reads `trainer.result` (resexp/train/result.py) and the Trainer's
public methods (eval_model, evaluate, save_last), never its parts. An exception from a hook stops the
run (on_exception runs for every callback then).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from resexp.errors import error_line
from resexp.records.epoch import EpochRecord
from resexp.run_dir import write_metrics
from resexp.train.result import EVALUATION, REPORT

log = logging.getLogger("resexp")


class Callback:
    stage: str | None = None  # the end-of-run step its on_fit_end is, as a stopped run's message names it

    def on_fit_start(self, trainer) -> None:
        pass

    def on_validation_end(self, trainer, record: EpochRecord, improved: bool) -> None:
        pass

    def on_epoch_end(self, trainer, record: EpochRecord, improved: bool | None) -> None:
        pass

    def on_fit_end(self, trainer) -> None:
        pass

    def on_exception(self, trainer, error: BaseException) -> None:
        pass


class OnValidated(Callback):
    """Calls each hook with (epoch, record) after each validated epoch, once last.pt and metrics.json hold
    it (a search's pruner: resexp/sweeps/trial.py); an exception from one stops the run."""

    def __init__(self, hooks: Iterable[Callable[[int, EpochRecord], None]]):
        self.hooks = list(hooks)

    def on_epoch_end(self, trainer, record, improved) -> None:
        if improved is not None:
            for hook in self.hooks:
                hook(record.epoch, record)


class FinalEvaluation(Callback):
    """best.pt reloaded and evaluated on val (and test): that is the run's reported best."""

    stage = EVALUATION

    def __init__(self, collect: bool = False):
        self.collect = collect  # keep the predictions (the run report draws them)

    def on_fit_end(self, trainer) -> None:
        from resexp.train.evaluation import final_evaluation

        final_evaluation(trainer, collect=self.collect)


class RunReport(Callback):
    """The run report's files (resexp/reports/run_report.py) from the final evaluation's predictions; its
    per-class scores go into metrics.json."""

    stage = REPORT

    def __init__(self, config: dict, logger=None):
        self.config, self.logger = config, logger  # the run's plain config; its RunLogger (TensorBoard) or None

    def on_fit_end(self, trainer) -> None:
        from resexp.reports.run_report import write_run_report

        r, writer = trainer.result, getattr(self.logger, "writer", None)
        r.extra.update(write_run_report(r, trainer.eval_model(), trainer.data.val, self.config, writer,
                                        trainer.env.distributed))


class MetricsFile(Callback):
    """metrics.json: `running` after every epoch, `completed` at the end, and for a run that stops, what
    is on disk and why it stopped (stopped.py, which also makes the error one line)."""

    def __init__(self, **extra):
        self.extra = extra  # what a completed record adds (resumed_from)
        self.completed = False

    def on_epoch_end(self, trainer, record, improved) -> None:
        write_metrics(trainer.result.paths.root, trainer.result.metrics("running"))

    def on_fit_end(self, trainer) -> None:
        r = trainer.result
        write_metrics(r.paths.root, r.metrics("completed", **self.extra, **r.extra))
        self.completed = True

    def on_exception(self, trainer, error) -> None:
        from resexp.train.stopped import record_stop

        r = trainer.result
        if self.completed:  # stopped in the trackers' end: every file of the run is written, its record stays
            log.warning(f"stopped after the run completed ({error_line(error)}); {r.paths.metrics} is complete")
            return
        r.status, r.error = record_stop(r, error)
