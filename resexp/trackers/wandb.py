"""logger=wandb: one W&B run per run, offline by default: written to <run dir>/wandb/offline-run-*/,
uploaded later with `wandb sync`. A sweep's jobs share a group (the sweep directory); a resumed run
reopens its W&B run id (resume="allow"), so `wandb sync` adds its points to the same run."""

from __future__ import annotations

from pathlib import Path

from resexp.errors import error_line
from resexp.trackers import TRACKERS, TrackedRun, Tracker, TrackerError

EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 130, "pruned": 0}  # W&B marks a run failed by its exit code
TAGS = ("model", "data", "host", "git_commit")  # W&B tags are short labels (64 characters at most)


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    name, package = "wandb", "wandb"

    def start(self, run: TrackedRun) -> dict:
        import wandb

        previous = run.previous.get(self.name, {})
        try:
            self.run = wandb.init(
                project=self.cfg.project, entity=self.cfg.entity, mode=self.cfg.mode, dir=str(run.run_dir),
                id=previous.get("id"), resume="allow" if previous.get("id") else None, name=run.name, group=run.group,
                job_type="sweep_job" if run.sweep is not None else "train",
                config={**run.config, "run_info": run.info}, tags=[f"{k}:{run.tags[k]}"[:64] for k in TAGS
                                                                   if k in run.tags],
                settings=wandb.Settings(silent=True, show_warnings=False, console="off"), reinit="create_new")
        except Exception as e:  # noqa: BLE001 - no API key online, a bad setting: one line
            raise TrackerError(f"logger=wandb could not start (logger.wandb.mode={self.cfg.mode}): "
                               f"{error_line(e)}") from e
        if previous.get("id"):  # the resumed run's config (trainer.epochs, trainer.resume) may differ
            self.run.config.update({**run.config, "run_info": run.info}, allow_val_change=True)
        return {"id": self.run.id, "project": self.cfg.project, "dir": str(run.run_dir / "wandb")}

    def log_epoch(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_best(self, metrics: dict[str, float]) -> None:
        self.run.summary.update({f"best/{k}": v for k, v in metrics.items()})

    def log_artifacts(self, files: list[Path], root: Path) -> dict[str, str]:
        missing = {}
        for f in files:  # the run's files (offline: linked into the W&B run directory until the sync)
            try:
                self.run.save(str(f), base_path=str(root), policy="now")
            except Exception as e:  # noqa: BLE001 - the others are still saved, and the run still ends
                missing[f.relative_to(root).as_posix()] = error_line(e, limit=120)
        return missing

    def finish(self, status: str, error: str | None = None) -> None:
        if error:
            self.run.summary["error"] = error
        self.run.summary["status"] = status  # pruned ends with exit code 0 like completed: this tells them apart
        self.run.finish(exit_code=EXIT_CODES[status])
