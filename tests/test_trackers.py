"""Experiment trackers (logger=mlflow, logger=wandb) and run_info.json, read back through MLflow's own
client and W&B's offline run files: a run and its resume, a sweep with a failing job, a 2-process DDP
run, and the one-line errors of a tracker that cannot start."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from resexp.config import compose
from resexp.errors import ConfigError
from resexp.provenance import git_state
from resexp.train import run

pytest.importorskip("mlflow")
pytest.importorskip("wandb")

from mlflow.tracking import MlflowClient  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

TINY = ["data=synthetic", "data.num_samples=64", "data.image_size=8", "data.batch_size=16", "data.num_classes=4",
        "model.stages.depths=[1,1,1]", "trainer.progress=false", "trainer.report=false"]
EPOCH_METRICS = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc5", "train/lr", "train/throughput"}


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables: creating them takes MLflow seconds, so tests copy this file."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def store(empty_store: Path, outputs: Path) -> str:
    """A fresh copy of the empty store at outputs/mlflow.db, where logger=mlflow puts its default store."""
    outputs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store, outputs / "mlflow.db")
    return f"sqlite:///{outputs / 'mlflow.db'}"


def mlflow_runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("resexp").experiment_id
    return client.search_runs([experiment], order_by=["attributes.start_time"])


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)]


def wandb_records(run_dir: Path) -> list[tuple[Path, list]]:
    """Each offline W&B run under run_dir/wandb/ with its records, read from its .wandb file (a LevelDB log
    of protobuf records: W&B's transaction log, which `wandb sync` uploads)."""
    runs = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, records, pos, part = path.read_bytes(), [], 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            part, pos = part + data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # a whole record, or the last part of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(part)
                records.append(record)
                part = b""
        runs.append((path.parent, records))
    return runs


def wandb_run(records: list) -> dict:
    """One offline run's id, group, config, history rows, summary and exit code."""
    out = {"history": [], "summary": {}, "config": {}, "exit_code": None}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(id=r.run.run_id, group=r.run.run_group, tags=list(r.run.tags))
            out["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            out["summary"].update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in r.summary.update})
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


@pytest.mark.slow
def test_a_run_and_its_resume_are_one_mlflow_run_and_one_wandb_run_id(tmp_path, empty_store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs = tmp_path / "outputs"
    uri = store(empty_store, outputs)  # the default store's place, ./outputs/: no tracking_uri below
    first = outputs / "2026-12-01" / "10-00-00-000000"
    args = [*TINY, "logger=[tensorboard,mlflow,wandb]"]
    run(compose([*args, "trainer.epochs=1", "trainer.report=true"]), run_dir=first)  # with the report's files
    second = outputs / "2026-12-01" / "11-00-00-000000"
    run(compose([*args, "trainer.epochs=2", f"trainer.resume={first}"]), run_dir=second)

    (ml,) = mlflow_runs(uri)  # the resume continued the first run
    assert ml.info.status == "FINISHED" and ml.info.run_name == "2026-12-01/10-00-00-000000"
    assert EPOCH_METRICS <= set(ml.data.metrics)
    assert [step for step, _ in history(uri, ml.info.run_id, "val/acc")] == [1, 2]
    metrics = json.loads((second / "metrics.json").read_text())
    assert ml.data.metrics["best/val_acc"] == pytest.approx(metrics["best"]["val_acc"])
    assert ml.data.params["optimizer.lr"] == "0.1" and ml.data.params["model.stages.depths"] == "[1, 1, 1]"
    assert ml.data.params["trainer.epochs"] == "1"  # MLflow keeps a param's first value
    tags = ml.data.tags
    assert tags["model"] == "resnet20" and tags["data"] == "synthetic" and tags["host"] and tags["torch"]
    checkout = git_state(Path(__file__).resolve().parents[1])
    if checkout is not None:  # run from a checkout: its commit (the cwd's too when pytest runs there)
        assert tags["git_commit"] == checkout["commit"]
    client = MlflowClient(tracking_uri=uri)
    artifacts = {f.path for f in client.list_artifacts(ml.info.run_id)}
    assert {"best.safetensors", "model.json", "metrics.json", "run_info.json", "curves.png"} <= artifacts
    assert (outputs / "mlartifacts" / ml.info.run_id / "artifacts" / "best.safetensors").is_file()

    info = json.loads((second / "run_info.json").read_text())
    original = json.loads((first / "run_info.json").read_text())
    assert info["started"] == original["started"] and info["trackers"]["mlflow"]["run_id"] == ml.info.run_id
    assert [r["from"] for r in info["resumes"]] == [str(first / "checkpoints" / "last.pt")]
    assert info["versions"]["torch"] and info["devices"] and info["world_size"] == 1

    ((_, rec1),), ((dir2, rec2),) = wandb_records(first), wandb_records(second)
    a, b = wandb_run(rec1), wandb_run(rec2)
    assert a["id"] == b["id"] == original["trackers"]["wandb"]["id"]  # `wandb sync` joins them into one run
    assert [h["_step"] for h in a["history"] + b["history"]] == [1, 2]
    assert EPOCH_METRICS <= set(b["history"][-1])
    assert b["summary"]["best/val_acc"] == pytest.approx(metrics["best"]["val_acc"])
    assert b["config"]["optimizer"]["lr"] == 0.1 and b["config"]["run_info"]["resexp"]
    assert "model:resnet20" in b["tags"] and a["exit_code"] == b["exit_code"] == 0
    assert (dir2 / "files" / "metrics.json").exists() and (wandb_records(first)[0][0] / "files" / "model.json").exists()


@pytest.mark.slow
def test_a_sweep_is_a_parent_run_with_a_child_per_job_and_a_failed_job_is_failed(
        tmp_path, empty_store, monkeypatch, in_process):
    from resexp.train.trainer import Trainer

    uri = store(empty_store, tmp_path / "db")
    loop = Trainer.loop

    def fail_seed_1(self):
        if self.cfg.seed == 1:
            raise RuntimeError("boom\nsecond line")
        loop(self)

    monkeypatch.setattr(Trainer, "loop", fail_seed_1)
    code = in_process(tmp_path, "-m", *TINY, "trainer.epochs=1", "logger=[mlflow,wandb]",
                      f"logger.mlflow.tracking_uri={uri}", "seed=0,1,2")
    assert code == 1
    (sweep,) = tmp_path.glob("outputs/multirun/*/*")
    parent, *children = mlflow_runs(uri)
    assert parent.info.run_name == str(sweep.relative_to(tmp_path / "outputs")) and parent.info.status == "FAILED"
    assert [c.data.tags["mlflow.parentRunId"] for c in children] == [parent.info.run_id] * 3
    assert [c.data.params["seed"] for c in children] == ["0", "1", "2"]
    assert [c.info.status for c in children] == ["FINISHED", "FAILED", "FINISHED"]
    assert children[1].data.tags["error"] == "RuntimeError: boom"
    jobs = [wandb_run(wandb_records(sweep / str(n))[0][1]) for n in range(3)]
    assert {j["group"] for j in jobs} == {parent.info.run_name}
    assert [j["exit_code"] for j in jobs] == [0, 1, 0] and jobs[1]["summary"]["error"] == "RuntimeError: boom"


@pytest.mark.slow
def test_ddp_only_rank_0_logs(tmp_path, empty_store):
    from test_ddp import finish, launch

    uri = store(empty_store, tmp_path / "db")
    proc = launch(tmp_path, *TINY, "trainer.epochs=1", "logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri={uri}",
                  nproc=2)
    run_dir = finish(proc, tmp_path, set())
    (ml,) = mlflow_runs(uri)
    assert ml.info.status == "FINISHED" and ml.data.tags["world_size"] == "2"
    assert history(uri, ml.info.run_id, "train/loss") == [(1, pytest.approx(ml.data.metrics["train/loss"]))]
    ((_, records),) = wandb_records(run_dir)
    assert [h["_step"] for h in wandb_run(records)["history"]] == [1]
    assert json.loads((run_dir / "run_info.json").read_text())["world_size"] == 2


def test_a_tracker_that_cannot_start_is_one_line_before_training(tmp_path, monkeypatch, in_process, capsys):
    import importlib.util

    args = [*TINY, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'bad_uri'}"]
    assert in_process(tmp_path, *args, "logger=mlflow", "logger.mlflow.tracking_uri=bogus://nowhere") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: logger=mlflow could not open the store bogus://nowhere: ") and "\n" not in err
    assert not (tmp_path / "bad_uri" / "checkpoints").exists()

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert in_process(tmp_path, *TINY, "logger=wandb", f"hydra.run.dir={tmp_path / 'missing'}") == 2
    assert capsys.readouterr().err.strip() == \
        "error: logger=wandb needs the wandb package: pip install 'resexp[wandb]'"
    assert not (tmp_path / "missing" / "metrics.json").exists()


def test_logger_options_have_their_own_sections():
    cfg = compose(["logger=[tensorboard,mlflow]", "logger.mlflow.experiment=study"])
    assert cfg.logger.tensorboard == {} and cfg.logger.mlflow.experiment == "study" and cfg.logger.wandb is None
    assert compose(["logger=mlflow"]).logger.tensorboard is None  # as in lightning-hydra-template: only MLflow
    with pytest.raises(ConfigError, match=r"logger.mlflow is null in this config; choose it: logger=mlflow"):
        compose(["logger.mlflow.experiment=study"])


def test_git_state_names_the_commit_and_a_changed_tracked_file(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    commit = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    (tmp_path / "untracked.txt").write_text("x")
    assert git_state(tmp_path) == {"commit": commit.strip(), "dirty": False, "root": str(tmp_path)}
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path)["dirty"] is True
    assert git_state(tmp_path.parent) is None or git_state(tmp_path.parent)["root"] != str(tmp_path)


def test_a_tracker_that_fails_mid_run_is_dropped_and_an_open_run_ends_interrupted(tmp_path, caplog):
    from resexp.records.epoch import EpochRecord
    from resexp.trackers import TrackedRun, Tracker
    from resexp.train.logger import RunLogger

    class Recording(Tracker):
        name, package = "recording", "json"

        def __init__(self, fail: bool):
            super().__init__(None)
            self.fail, self.calls = fail, []

        def start(self, run):
            return {"id": self.name}

        def log_epoch(self, values, step):
            if self.fail:
                raise ConnectionError("server gone")
            self.calls.append(("epoch", step, values["train/loss"]))

        def log_best(self, metrics):
            self.calls.append(("best", metrics))

        def log_artifacts(self, files, root):
            self.calls.append(("files", files))

        def finish(self, status, error=None):
            self.calls.append(("finish", status, error))

    broken, kept = Recording(fail=True), Recording(fail=False)
    logger = RunLogger(tmp_path, enabled=True, tensorboard=False, trackers=[broken, kept])
    assert logger.start(TrackedRun(tmp_path, tmp_path, {}, {}, {})) == {"recording": {"id": "recording"}}
    record = EpochRecord(epoch=1, train_loss=0.5, train_acc=0.5, lr=0.1, seconds=1.0, images_per_s=10.0)
    logger.epoch(record, epochs=2, is_best=False)  # the broken one is dropped; training goes on
    assert "logger=recording: log_epoch failed (ConnectionError: server gone)" in caplog.text
    logger.close()  # a second Ctrl-C skipped finish: the run still ends, as interrupted
    assert broken.calls == [] and kept.calls == [("epoch", 1, 0.5), ("finish", "interrupted", None)]
    assert not (tmp_path / "tb").exists()  # logger=... without tensorboard writes no events


def test_an_interrupted_sweep_ends_its_parent_run_killed(tmp_path, empty_store, monkeypatch, in_process):
    # Hydra skips on_multirun_end when a job stops the sweep: the job itself closes the parent run
    from resexp.train.signals import Interrupted
    from resexp.train.trainer import Trainer

    def preempted(self):
        raise Interrupted("stopped by SIGTERM after epoch 0; last.pt saved")

    monkeypatch.setattr(Trainer, "loop", preempted)
    uri = store(empty_store, tmp_path / "db")
    assert in_process(tmp_path, "-m", *TINY, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "seed=0,1") == 130
    parent, child = mlflow_runs(uri)  # the second job never started
    assert (parent.info.status, child.info.status) == ("KILLED", "KILLED")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
