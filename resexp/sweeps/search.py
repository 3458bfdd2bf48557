"""resexp's search (`hparams_search=<preset>`): Optuna's ask-and-tell around Hydra's launchers.

The sweep asks the study for a trial, composes its config through Hydra (so the schemas check it)
and launches it as job number = trial number (its directory `<sweep dir>/<n>`); the job reports each
validation to the pruner and tells the study how it ended (resexp/sweeps/trial.py). With the pool
launcher a new trial starts as soon as a worker is free; other launchers (joblib, SLURM) run
`n_jobs` trials per batch.

Run again with the same hydra.sweep.dir, the search continues its study: finished trials are kept
(n_trials counts them), a trial left RUNNING by the stop resumes in its own directory, from its
last.pt, with its own parameters, and trial n is sampled with seed + n, so a resumed search asks
for what a search never stopped would have."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from resexp.errors import ConfigError
from resexp.sweeps import space as spaces
from resexp.sweeps import study as studies

log = logging.getLogger("resexp")
SUMMARY = "search.json"  # in the sweep directory: the study's trials, its best and the importances


class Search:
    def __init__(self, given) -> None:
        self.cfg = studies.search_config(given)

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.monitor = str(config.trainer.monitor)
        self.epochs = int(config.trainer.epochs)

    # --- the space, checked before the study is touched ----------------------------------------------
    def prepare(self, arguments: list[str], validate) -> None:
        self.space, self.fixed = spaces.parse(self.cfg.params, arguments)
        if not self.space:
            raise ConfigError("hparams_search: the search space is empty; give hydra.sweeper.params "
                              "(e.g. optimizer.lr: tag(log, interval(0.001, 0.1)))")
        studies.direction(self.cfg, self.monitor)
        if self.cfg.sampler.name == "grid":
            spaces.grid(self.space)
        validate([self.fixed + spaces.overrides(p) for p in spaces.corners(self.space)])

    # --- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        from omegaconf import OmegaConf

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        self.study = studies.open_study(self.cfg, self.sweep_dir, self.monitor, self.epochs, create=True)
        resume = self.orphans()
        where = studies.storage_text(self.cfg, self.sweep_dir)
        log.info(f"search '{self.cfg.study_name}' in {where}: {self.counted()} of {self.cfg.n_trials} trials "
                 f"begun earlier{f', {len(resume)} of them resumed now' if resume else ''}; "
                 f"sampler {self.cfg.sampler.name}, pruner {self.cfg.pruner.name}")
        try:
            if hasattr(self.launcher, "submit"):
                self.run_pool(resume)
            else:
                self.run_batches(resume)
        finally:
            self.write_summary()
            if hasattr(self.launcher, "close"):
                self.launcher.close()

    def counted(self) -> int:
        """Trials begun in the study (finished or running): n_trials is their total."""
        import optuna

        skip = (optuna.trial.TrialState.WAITING,)
        return sum(t.state not in skip for t in self.study.get_trials(deepcopy=False))

    def orphans(self) -> list:
        """RUNNING trials of this sweep directory that no process runs (a stopped search): resumed."""
        import optuna

        from resexp.sweeps.jobs import is_locked

        here = str(self.sweep_dir.resolve())
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return [t for t in running if t.user_attrs.get("sweep_dir") == here
                and not is_locked(self.sweep_dir / str(t.number))]

    def ask(self):
        import optuna

        number = len(self.study.get_trials(deepcopy=False))  # the next trial's number (one process asking)
        self.study.sampler = studies.sampler(self.cfg.sampler, number, self.space)
        trial = self.study.ask(self.space)
        trial.set_user_attr("sweep_dir", str(self.sweep_dir.resolve()))
        if self.cfg.sampler.name == "grid" and trial.params in [
                t.params for t in self.study.get_trials(deepcopy=False) if t.number != trial.number]:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)  # the grid is exhausted
            return None
        return self.study.get_trials(deepcopy=False)[trial.number]

    def overrides(self, trial) -> list[str]:
        return self.fixed + spaces.overrides(trial.params)

    def wanted(self) -> bool:
        return self.counted() < self.cfg.n_trials

    def run_pool(self, resume: list) -> None:
        running: dict = {}
        while True:
            while len(running) < self.launcher.workers and (resume or self.wanted()):
                trial = resume.pop(0) if resume else self.ask()
                if trial is None:
                    break
                running[self.launcher.submit(self.overrides(trial), trial.number)] = trial.number
            if not running:
                return
            for f in self.launcher.wait_first(set(running)):
                self.finished(running.pop(f), f)

    def run_batches(self, resume: list) -> None:
        while resume or self.wanted():
            batch = []
            while len(batch) < self.cfg.n_jobs and (resume or self.wanted()):
                trial = resume.pop(0) if resume else self.ask()
                if trial is None:
                    break
                batch.append(trial)
            if not batch:
                return
            for group in _consecutive(sorted(batch, key=lambda t: t.number)):
                returns = self.launcher.launch([self.overrides(t) for t in group], initial_job_idx=group[0].number)
                for t, ret in zip(group, returns, strict=True):
                    self.finished(t.number, ret)

    def finished(self, number: int, outcome) -> None:
        """After a job: its trial as the job told the study; one the job could not tell (it crashed) FAILs."""
        import optuna

        t = self.study.get_trials(deepcopy=False)[number]
        if t.state == optuna.trial.TrialState.RUNNING:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            t = self.study.get_trials(deepcopy=False)[number]
        value = "" if t.value is None else f" {self.monitor} {t.value:.4f}"
        pruned = f" at epoch {t.last_step}" if t.state == optuna.trial.TrialState.PRUNED else ""
        log.info(f"trial {number}: {t.state.name.lower()}{pruned}{value} ({' '.join(spaces.overrides(t.params))})")

    # --- the summary the report shows ---------------------------------------------------------------------
    def write_summary(self) -> None:
        if getattr(self, "study", None) is None:
            return
        (self.sweep_dir / SUMMARY).write_text(json.dumps(summary(self.study, self.cfg, self.monitor,
                                                                 studies.storage_text(self.cfg, self.sweep_dir)),
                                                         indent=1, default=str))


def summary(study, cfg, monitor: str, storage: str) -> dict:
    """The study as search.json keeps it: every trial, the best one, the parameter importances."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    importances = {}
    if len(complete) >= 2:
        try:  # Optuna's own evaluator (fANOVA); it needs some spread of values
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as e:
            log.warning(f"parameter importances not computed: {e}")
    return {
        "study": cfg.study_name, "storage": storage, "objective": monitor, "direction": study.direction.name.lower(),
        "sampler": cfg.sampler.name, "pruner": cfg.pruner.name, "n_trials": cfg.n_trials,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
        "importances": {k: float(v) for k, v in importances.items()},
        "trials": [{"number": t.number, "state": t.state.name.lower(), "value": _finite(t.value),
                    "params": t.params, "last_epoch": t.last_step} for t in trials],
    }


def _finite(v):
    return v if v is not None and math.isfinite(v) else None


def _consecutive(trials: list) -> list[list]:
    """Runs of consecutive trial numbers: a launcher numbers a batch's jobs from its first."""
    groups: list[list] = []
    for t in trials:
        if groups and t.number == groups[-1][-1].number + 1:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups
