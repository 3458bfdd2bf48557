"""logger=mlflow: one MLflow run per run, through MlflowClient (no global active run, so jobs of a
sweep run in one process do not share one). The store is `logger.mlflow.tracking_uri`, or by
default SQLite in the `outputs/` folder of the directory the command starts in (like MLflow's own
`./mlruns`), whatever hydra.run.dir says, with the artifacts beside it (no server):

    mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db

A run prints the store it writes to when it starts. A sweep is a parent run with one child run per
job (the jobs use the store the sweep opened); a resumed run reopens its MLflow run."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from resexp.cli import environ
from resexp.errors import error_line
from resexp.trackers import TRACKERS, TrackedRun, Tracker, TrackerError, label, sweep_ids

log = logging.getLogger("resexp")

# MLflow has no "pruned": a pruned trial ends KILLED (stopped early, not failed), its tag status=pruned says why
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "pruned": "KILLED"}
BATCH = 100  # MLflow's limit on params per log_batch call
PARENT_TAG = "mlflow.parentRunId"  # the MLflow UI nests a run under its parent by this tag
# MLflow 3's UI opens an experiment by its kind: without this tag it guesses, and a new experiment
# opens in the GenAI view, where training runs are not listed
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
STORE_LOCK_S = 120  # how long a run waits while another process creates or migrates the SQLite store
CONNECT_TIMEOUT_S = 10  # a server's answer at start-up (MLflow's default retries for minutes)


def default_store() -> tuple[str, str]:
    """(tracking URI, artifact location) without logger.mlflow.tracking_uri: ./outputs/mlflow.db and
    ./outputs/mlartifacts/ of the current directory, the folder Hydra's default run directories go to."""
    outputs = Path.cwd() / "outputs"
    return f"sqlite:///{outputs / 'mlflow.db'}", (outputs / "mlartifacts").as_uri()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for servers and other databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


@TRACKERS.register("mlflow")
class MLflowTracker(Tracker):
    name, package = "mlflow", "mlflow"

    def start(self, run: TrackedRun) -> dict:
        parent = sweep_ids(run.sweep).get(self.name, {})
        self.client, uri, experiment_id = self._connect(self.cfg, parent.get("tracking_uri"))
        try:
            return self._start(run, uri, experiment_id, parent)
        except Exception as e:  # noqa: BLE001 - whatever the store raises: one line naming it
            raise TrackerError(f"logger=mlflow could not start a run in {uri}: {error_line(e)}") from e

    def _start(self, run: TrackedRun, uri: str, experiment_id: str, parent: dict) -> dict:
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
            if parent.get("tracking_uri") == uri:
                tags[PARENT_TAG] = parent["run_id"]
            self.run_id = self.client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
        # a resumed run keeps its params (MLflow refuses to change one): only keys it lacks are added
        logged = self.client.get_run(self.run_id).data.params
        params = [Param(k, param_text(v)) for k, v in leaves(run.config).items() if k not in logged]
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

    def log_artifacts(self, files: list[Path], root: Path) -> dict[str, str]:
        """Each file on its own: one that cannot be stored (a full disk) does not cost the others."""
        missing = {}
        for f in files:
            folder = f.parent.relative_to(root).as_posix()
            try:
                self.client.log_artifact(self.run_id, str(f), artifact_path=None if folder == "." else folder)
            except Exception as e:  # noqa: BLE001 - a full disk, a lost server: named, and the run still ends
                missing[f.relative_to(root).as_posix()] = error_line(e, limit=120)
        if missing:
            self.client.set_tag(self.run_id, "missing_artifacts", ", ".join(missing)[:5000])
        return missing

    def finish(self, status: str, error: str | None = None) -> None:
        if error:
            self.client.set_tag(self.run_id, "error", error)
        self.client.set_tag(self.run_id, "status", status)
        self.client.set_terminated(self.run_id, STATUS[status])

    @classmethod
    def sweep_started(cls, cfg, sweep_dir: Path, outputs: Path) -> dict:
        client, uri, experiment_id = cls._connect(cfg)
        parent = client.create_run(experiment_id, run_name=label(sweep_dir, outputs),
                                   tags={"sweep_dir": str(sweep_dir.resolve())})
        return {"run_id": parent.info.run_id, "tracking_uri": uri}

    @classmethod
    def sweep_ended(cls, cfg, ids: dict, status: str) -> None:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=ids["tracking_uri"]).set_terminated(ids["run_id"], STATUS[status])

    @staticmethod
    def _connect(cfg, sweep_uri: str | None = None):
        """(client, tracking URI, experiment id), the experiment created when new. The store is
        logger.mlflow.tracking_uri, else the one the sweep opened (a job on another node), else
        default_store(); printed, so that nobody has to guess where it went."""
        from mlflow.tracking import MlflowClient

        uri, artifacts = cfg.tracking_uri or sweep_uri, None
        if not uri:
            uri, artifacts = default_store()
        db = sqlite_file(uri)
        try:
            with _quick_failure(uri), _store_lock(db):
                client = MlflowClient(tracking_uri=uri)
                experiment = client.get_experiment_by_name(cfg.experiment)
                if experiment is None:
                    experiment_id = client.create_experiment(cfg.experiment, artifact_location=artifacts,
                                                             tags={KIND_TAG: KIND})
                    experiment = client.get_experiment(experiment_id)
                elif KIND_TAG not in experiment.tags:  # made by an older resexp, or by hand
                    client.set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND)
        except TrackerError:
            raise
        except Exception as e:  # noqa: BLE001 - a bad URI, an unreachable server, a store that cannot be created
            raise TrackerError(f"logger=mlflow could not open the store {uri}: {error_line(e)}") from e
        # the runs table in the model-training view: MLflow 3's UI opens in its GenAI view in a new browser
        log.info(f"MLflow store: {uri} (artifacts: {experiment.artifact_location}); to browse: mlflow ui "
                 f"--backend-store-uri {uri}, then http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}"
                 f"/runs?workflowType=machine_learning")
        return client, uri, experiment.experiment_id


@contextmanager
def _store_lock(db: Path | None):
    """A SQLite store's creation and migration under a file lock beside it: two runs that create a new
    store at once otherwise both run MLflow's schema migrations and leave it broken for every later run
    (`table latest_metrics already exists`). MLflow's and Alembic's lines about it are kept quiet."""
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    from resexp.files import check_writable

    try:  # SQLite writes its journal beside the file: a read-only folder fails now, not after retries
        check_writable(db.parent)
    except OSError as e:
        raise TrackerError(f"logger=mlflow cannot write its SQLite store {db}: {e.strerror} ({e.filename}); "
                           f"make it writable or set logger.mlflow.tracking_uri") from None
    db.parent.mkdir(parents=True, exist_ok=True)
    quiet = [logging.getLogger(name) for name in ("alembic", "mlflow.store", "mlflow.store.db.utils")]
    levels = [q.level for q in quiet]
    try:
        with FileLock(str(db) + ".lock", timeout=STORE_LOCK_S):
            for q in quiet:
                q.setLevel(logging.WARNING)
            yield
    except Timeout:
        raise TrackerError(f"logger=mlflow: another process has held {db}.lock for {STORE_LOCK_S} s; "
                           f"is a run stuck creating the store?") from None
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


@contextmanager
def _quick_failure(uri: str):
    """A server that does not answer fails the start-up within seconds: MLflow retries for about four
    minutes by default, which stays its setting for the rest of the run (a short outage mid-run)."""
    if not uri.startswith(("http://", "https://")):
        yield
        return
    with environ({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CONNECT_TIMEOUT_S)}):
        yield


def param_text(value) -> str:
    """A param as the config writes it: false, true and null (str() gives False, True and None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)
