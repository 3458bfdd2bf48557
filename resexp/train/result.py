"""Where a run stands, as everything outside the training loop reads it: the end-of-run steps and the
other callbacks (callbacks.py), the record of a run that stopped (stopped.py) and the run report
(resexp/reports/run_report.py). The Trainer owns one (`trainer.result`) and fills it in; nothing outside the
Trainer reads the Trainer's own parts."""

from __future__ import annotations

from dataclasses import dataclass, field

from resexp.records.facts import RunFacts
from resexp.run_dir import RunPaths
from resexp.train.state import TrainingState

# the steps of a run, as a message names them: a stop in the later two leaves training complete
TRAINING, EVALUATION, REPORT = "training", "best.pt's re-evaluation", "the run report"


@dataclass
class RunResult:
    paths: RunPaths
    facts: RunFacts
    state: TrainingState  # position, history (EpochRecords), best-so-far: what last.pt restores
    is_main: bool  # this process writes the run's files (rank 0)
    report: bool  # trainer.report: the run report is part of a complete run
    epochs: int  # trainer.epochs: what the run trains to
    stage: str = TRAINING  # the step running now
    status: str = "running"  # running, completed, then failed / interrupted / pruned when stopped
    error: BaseException | None = None  # the error the run stops with (one line), once stopped
    final: dict = field(default_factory=dict)  # best.pt re-evaluated on val (and test): metrics.json's best
    val: dict | None = None  # that validation pass's outputs (predictions too when the report is written)
    extra: dict = field(default_factory=dict)  # what a completed run's metrics.json adds (resumed_from, per_class)
    step_losses: list[tuple[int, float]] = field(default_factory=list)  # the last epoch's logged step losses

    def metrics(self, status: str, **extra) -> dict:
        """metrics.json's record of the run as it stands."""
        return {"status": status, **self.state.summary(), **self.facts.metrics_fields(), **extra}
