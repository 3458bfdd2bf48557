"""A Trainer built whole: resexp's own steps and a user's callbacks get the same hooks, in order, per
epoch; a run that stops calls every on_exception and is recorded as failed with its checkpoints intact."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from resexp.config import compose
from resexp.errors import CheckpointError
from resexp.train import run
from resexp.train.callbacks import Callback
from resexp.train.signals import Interrupted, StopNow

TINY = ["data=synthetic", "data.num_samples=64", "data.image_size=8", "data.num_classes=3", "data.batch_size=16",
        "model.stages.depths=[1,1,1]", "trainer.epochs=3", "trainer.val_every=2", "trainer.progress=false",
        "trainer.report=false", "trainer.device=cpu"]


class Recorder(Callback):
    def __init__(self, fail_at_epoch: int | None = None):
        self.calls, self.fail_at_epoch = [], fail_at_epoch

    def on_fit_start(self, trainer):
        self.calls.append(("fit_start", trainer.result.state.epoch))

    def on_validation_end(self, trainer, record, improved):
        self.calls.append(("validation_end", record.epoch, improved))

    def on_epoch_end(self, trainer, record, improved):
        # the checkpoints' callback came first: last.pt already holds this epoch
        saved = torch.load(trainer.result.paths.last, weights_only=True)["epoch"]
        self.calls.append(("epoch_end", record.epoch, improved, saved))
        if record.epoch == self.fail_at_epoch:
            raise RuntimeError("user callback failed")

    def on_fit_end(self, trainer):
        self.calls.append(("fit_end", trainer.result.stage, trainer.result.final["epoch"]))

    def on_exception(self, trainer, error):
        self.calls.append(("exception", type(error).__name__, trainer.result.status))


def test_a_user_callbacks_hooks_fire_in_order(tmp_path):
    recorder = Recorder()
    best_acc = run(compose(TINY), run_dir=tmp_path, callbacks=[recorder])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    best = metrics["best"]["epoch"]
    assert recorder.calls == [
        ("fit_start", 0),
        ("epoch_end", 1, None, 1),  # val_every=2: epoch 1 is not validated
        ("validation_end", 2, True), ("epoch_end", 2, True, 2),
        ("validation_end", 3, best == 3), ("epoch_end", 3, best == 3, 3),
        # after resexp's end-of-run steps: best.pt re-evaluated (the stage named in a stopped run's message)
        ("fit_end", "best.pt's re-evaluation", best),
    ]
    assert metrics["status"] == "completed" and metrics["best"]["val_acc"] == best_acc


def test_an_exception_runs_the_exception_hooks_and_the_run_is_failed_with_checkpoints_intact(tmp_path):
    recorder = Recorder(fail_at_epoch=2)
    with pytest.raises(RuntimeError, match="user callback failed"):
        run(compose(TINY), run_dir=tmp_path, callbacks=[recorder])
    assert recorder.calls[-1] == ("exception", "RuntimeError", "failed")  # after metrics.json recorded it
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == "RuntimeError: user callback failed"
    assert [r["epoch"] for r in metrics["history"]] == [1, 2] and metrics["best"]["epoch"] == 2
    last = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    best = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)
    assert (last["epoch"], last["batch"], best["best"]["epoch"]) == (2, 0, 2)
    # intact: the run resumes from its last.pt to the end
    assert run(compose([*TINY, f"trainer.resume={tmp_path}"]), run_dir=tmp_path / "resumed") >= 0
    assert json.loads((tmp_path / "resumed/metrics.json").read_text())["status"] == "completed"


# what metrics.json says of a run stopped after its last epoch: a signal's record, a failure's, or a
# kill -9's (the last epoch's `running`, nothing after it)
@pytest.mark.parametrize("left", ["interrupted", "failed", "running"])
def test_a_run_stopped_during_its_final_evaluation_resumes_to_write_what_it_owes(tmp_path, monkeypatch, left):
    import resexp.train.evaluation as evaluation

    real = evaluation.final_evaluation

    def stopped_once(*args, **kwargs):  # SIGTERM just after the last epoch's last.pt
        monkeypatch.setattr(evaluation, "final_evaluation", real)
        raise StopNow(signal.SIGTERM)

    monkeypatch.setattr(evaluation, "final_evaluation", stopped_once)
    with pytest.raises(Interrupted, match="during best.pt's re-evaluation: training is complete"):
        run(compose(TINY), run_dir=tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and len(metrics["history"]) == 3
    (tmp_path / "metrics.json").write_text(json.dumps({**metrics, "status": left}))
    # the command the message gives: nothing is trained again, the evaluation is written
    recorder = Recorder()
    run(compose([*TINY, f"trainer.resume={tmp_path}"]), run_dir=tmp_path, callbacks=[recorder])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert recorder.calls == [("fit_start", 3), ("fit_end", "best.pt's re-evaluation", metrics["best"]["epoch"])]
    # once completed, the same resume is refused: nothing is owed
    with pytest.raises(CheckpointError, match="leaves nothing to train"):
        run(compose([*TINY, f"trainer.resume={tmp_path}"]), run_dir=tmp_path / "again")


def test_a_stop_after_metrics_json_says_completed_leaves_it_completed(tmp_path):
    class StoppedAtTheEnd(Callback):
        def on_fit_end(self, trainer):
            raise StopNow(signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        run(compose(TINY), run_dir=tmp_path, callbacks=[StoppedAtTheEnd()])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["best"]["val_acc"] is not None


def test_a_run_starts_no_work_beside_its_training_loop(tmp_path, monkeypatch):
    """On CPU the loop's OpenMP threads need every core and the GIL at each operator: a report import in a
    background thread made the default job's epochs slower, worker processes more (benchmarks/RESULTS.md).
    So until its training ends, a run (report on, TensorBoard on) starts no thread but TensorBoard's writer
    and tqdm's monitor, both idle, and no process at all."""
    import os
    import threading
    from pathlib import Path

    def children() -> set[int]:
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    found.add(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        return found

    started: list[str] = []  # every thread the run starts, short-lived ones too
    start = threading.Thread.start

    def record(thread):
        started.append(type(thread).__name__ if type(thread) is not threading.Thread else thread.name)
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", record)
    before = children()
    during: list[tuple[list[str], set[int]]] = []

    class During(Callback):
        def on_epoch_end(self, trainer, record, improved):
            during.append((list(started), children() - before))

    opts = [o for o in TINY if o != "trainer.report=false"] + ["trainer.report=true"]
    run(compose(opts), run_dir=tmp_path, callbacks=[During()])
    assert (tmp_path / "confusion_matrix.png").is_file() and len(during) == 3
    for threads, processes in during:  # TensorBoard's event writer waits on its queue, tqdm's monitor sleeps
        assert set(threads) <= {"_AsyncWriterThread", "TMonitor"}, during
        if Path("/proc/self/stat").exists():
            assert processes == set(), during
