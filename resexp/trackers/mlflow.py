"""logger=mlflow: one MLflow run per run, through MlflowClient (no global active run, so jobs of a
sweep run in one process do not share one). The store is `logger.mlflow.tracking_uri`, or by
default SQLite at outputs/mlflow.db with the artifacts in outputs/mlartifacts/ (no server):

    mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db

A sweep is a parent run with one child run per job; a resumed run reopens its MLflow run."""

from __future__ import annotations

from pathlib import Path

from resexp.errors import error_line
from resexp.trackers import TRACKERS, TrackedRun, Tracker, TrackerError, label, sweep_ids

# MLflow has no "pruned": a pruned trial ends KILLED (stopped early, not failed), its tag status=pruned says why
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "pruned": "KILLED"}
BATCH = 100  # MLflow's limit on params per log_batch call
PARENT_TAG = "mlflow.parentRunId"  # the MLflow UI nests a run under its parent by this tag


@TRACKERS.register("mlflow")
class MLflowTracker(Tracker):
    name, package = "mlflow", "mlflow"

    def start(self, run: TrackedRun) -> dict:
        self.client, uri, experiment_id = self._connect(self.cfg, run.outputs)
        try:
            return self._start(run, uri, experiment_id)
        except Exception as e:  # noqa: BLE001 - whatever the store raises: one line naming it
            raise TrackerError(f"logger=mlflow could not start a run in {uri}: {error_line(e)}") from e

    def _start(self, run: TrackedRun, uri: str, experiment_id: str) -> dict:
        from mlflow.entities import Param

        from resexp.config import leaves

        previous = run.previous.get(self.name, {})
        if previous.get("tracking_uri") == uri and self._exists(previous.get("run_id")):
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {**run.tags, "mlflow.source.name": run.info["command"]}
            if run.info["git"]["cwd"]:
                tags["mlflow.source.git.commit"] = run.info["git"]["cwd"]["commit"]
            parent = sweep_ids(run.sweep).get(self.name, {})
            if parent.get("tracking_uri") == uri:
                tags[PARENT_TAG] = parent["run_id"]
            self.run_id = self.client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
        # a resumed run keeps its params (MLflow refuses to change one): only keys it lacks are added
        logged = self.client.get_run(self.run_id).data.params
        params = [Param(k, str(v)) for k, v in leaves(run.config).items() if k not in logged]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])
        return {"run_id": self.run_id, "tracking_uri": uri, "experiment_id": experiment_id}

    def _exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            self.client.get_run(run_id)
            return True
        except Exception:  # noqa: BLE001 - not in this store: a new run
            return False

    def log_epoch(self, values: dict[str, float], step: int) -> None:
        self._metrics(values, step)

    def log_best(self, metrics: dict[str, float]) -> None:
        self._metrics({f"best/{k}": v for k, v in metrics.items()}, int(metrics.get("epoch") or 0))

    def _metrics(self, values: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def log_artifacts(self, files: list[Path], root: Path) -> None:
        for f in files:
            folder = f.parent.relative_to(root).as_posix()
            self.client.log_artifact(self.run_id, str(f), artifact_path=None if folder == "." else folder)

    def finish(self, status: str, error: str | None = None) -> None:
        if error:
            self.client.set_tag(self.run_id, "error", error)
        self.client.set_tag(self.run_id, "status", status)
        self.client.set_terminated(self.run_id, STATUS[status])

    @classmethod
    def sweep_started(cls, cfg, sweep_dir: Path, outputs: Path) -> dict:
        client, uri, experiment_id = cls._connect(cfg, outputs)
        parent = client.create_run(experiment_id, run_name=label(sweep_dir, outputs),
                                   tags={"sweep_dir": str(sweep_dir.resolve())})
        return {"run_id": parent.info.run_id, "tracking_uri": uri}

    @classmethod
    def sweep_ended(cls, cfg, ids: dict, status: str) -> None:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=ids["tracking_uri"]).set_terminated(ids["run_id"], STATUS[status])

    @staticmethod
    def _connect(cfg, outputs: Path):
        """(client, tracking URI, experiment id), the experiment created when new."""
        from mlflow.tracking import MlflowClient

        uri, artifacts = cfg.tracking_uri, None
        if not uri:  # the embedded default: SQLite beside the runs, artifacts beside it
            outputs.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{outputs.resolve() / 'mlflow.db'}"
            artifacts = (outputs / "mlartifacts").resolve().as_uri()
        try:
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(cfg.experiment)
            if experiment is None:
                try:
                    return client, uri, client.create_experiment(cfg.experiment, artifact_location=artifacts)
                except Exception:  # noqa: BLE001 - another job created it meanwhile
                    experiment = client.get_experiment_by_name(cfg.experiment)
                    if experiment is None:
                        raise
            return client, uri, experiment.experiment_id
        except Exception as e:  # noqa: BLE001 - a bad URI, an unreachable server, a store that cannot be created
            raise TrackerError(f"logger=mlflow could not open the store {uri}: {error_line(e)}") from e
