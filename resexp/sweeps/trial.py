"""A search's trial, seen from its job: every validated epoch's monitored value goes to the study's
pruner (which may stop the run: status `pruned`, its last.pt and history kept), and the job tells the
study how the trial ended. The job tells, not the sweep, so a trial's outcome is in the study even
when the process that asked for it is gone; an interrupted trial stays RUNNING, and the same search
run again resumes it (resexp/sweeps/search.py)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from resexp.errors import ResexpError

log = logging.getLogger("resexp")
SWEEPER = "hydra_plugins.resexp_sweeps.search_sweeper.SearchSweeper"


class Pruned(ResexpError):
    """The pruner stopped the trial after a validation: a status of its own, not a failure."""

    def __init__(self, message: str, epoch: int, value: float):
        super().__init__(message)
        self.epoch, self.value = epoch, value


class TrialLink:
    """One trial of the study, for the job that trains it."""

    def __init__(self, study, number: int, monitor: str, pruner_name: str):
        import optuna

        self.study, self.number, self.monitor, self.pruner_name = study, number, monitor, pruner_name
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        # Trial(study, id) is what study.ask() returns; Optuna keeps the id in this attribute
        self.trial = optuna.trial.Trial(study, frozen._trial_id)
        self.reported = set(frozen.intermediate_values)
        self.state = frozen.state

    @property
    def running(self) -> bool:
        import optuna

        return self.state == optuna.trial.TrialState.RUNNING

    def on_validated(self, epoch: int, record) -> None:
        """After each validated epoch (last.pt and metrics.json written; record: its EpochRecord):
        report; maybe prune."""
        value = getattr(record, self.monitor)
        if value is None or not math.isfinite(value):
            return
        if epoch not in self.reported:  # a resumed trial already reported the epochs before last.pt
            self.trial.report(float(value), epoch)
            self.reported.add(epoch)
        if self.trial.should_prune():
            raise Pruned(f"pruned by the {self.pruner_name} pruner after epoch {epoch} "
                         f"({self.monitor} {value:.4f})", epoch, float(value))

    def tell(self, status: str, value: float | None = None) -> None:
        import optuna

        if not self.running:
            return
        states = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}
        state = states.get(status, optuna.trial.TrialState.FAIL)
        if state == optuna.trial.TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state = optuna.trial.TrialState.FAIL  # a trial without a finite objective is no result
        self.study.tell(self.number, value if state == optuna.trial.TrialState.COMPLETE else None,
                        state=state, skip_if_finished=True)
        self.state = state


def trial_for_job(cfg) -> TrialLink | None:
    """The trial this multirun job trains, when the sweep is resexp's search; None otherwise."""
    from hydra.core.hydra_config import HydraConfig

    from resexp.sweeps.study import open_study, search_config

    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if sweeper.get("_target_") != SWEEPER:
        return None
    search = search_config(sweeper)
    monitor = str(cfg.trainer.monitor)
    study = open_study(search, Path(str(hydra_cfg.sweep.dir)), monitor, epochs=int(cfg.trainer.epochs))
    return TrialLink(study, int(hydra_cfg.job.num), monitor, search.pruner.name)


def objective(metrics: dict, monitor: str) -> float | None:
    """The trial's value: the best validated epoch's monitored value (metrics.json's `best`)."""
    value = (metrics.get("best") or {}).get(monitor)
    return float(value) if value is not None else None
