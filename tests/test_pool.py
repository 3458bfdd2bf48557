"""hydra/launcher=pool: one worker per device slot, each taking the next job as soon as it is free;
a stopped grid run again keeps its completed jobs and resumes the stopped ones from last.pt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resexp.errors import ConfigError
from resexp.sweeps.pool import DevicePool, device_slots, thread_budget, worker_slot

TINY = ["data=synthetic", "data.num_samples=64", "data.image_size=8", "data.batch_size=16",
        "model.stages.depths=[1,1,1]", "trainer.progress=false", "trainer.report=false"]


def test_device_slots():
    assert device_slots("cuda:0,cuda:1", None) == ["cuda:0", "cuda:1"]
    assert device_slots(["cuda:0", "cuda:1"], 4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]  # 2 per GPU
    assert device_slots(["cuda:0", "cuda:0", "cuda:1"], None) == ["cuda:0", "cuda:0", "cuda:1"]
    assert thread_budget(2, None) >= 1 and thread_budget(2, 3) == 3
    for bad in ("gpu0", "cuda:x"):
        with pytest.raises(ConfigError, match="is not a device"):
            device_slots(bad, None)


def test_each_worker_keeps_its_device_and_takes_the_next_job_when_free():
    """A fake device list (nothing touches a GPU): 4 workers on 2 'GPUs', jobs of uneven length.
    No job waits for a slow one: the short jobs run one after another beside the long one."""
    pool = DevicePool(device_slots(["cuda:0", "cuda:1"], 2), threads=1)
    try:
        durations = [1.5, 0.2, 0.2, 0.2, 0.2]
        futures = [pool.submit(time.sleep, d) for d in durations]
        results = [f.result(timeout=120) for f in futures]
        slots = [r[0] for r in results]
        starts = [r[1] for r in results]
        assert {s["device"] for s in slots} == {"cuda:0", "cuda:1"}
        assert all(s["threads"] == 1 for s in slots)
        long_slot = slots[0]["index"]
        # every short job ran on the other worker, and started before the long job ended
        assert all(s["index"] != long_slot for s in slots[1:]), slots
        assert max(starts[1:]) < starts[0] + durations[0], (starts, durations)
    finally:
        pool.close()
    wide = DevicePool(device_slots(["cuda:0", "cuda:1"], 4), threads=1)
    try:
        seen = [f.result(timeout=120)[2] for f in [wide.submit(_slot_after, 0.3) for _ in range(4)]]
        by_index = {s["index"]: s["device"] for s in seen}
        assert sorted(by_index.values()) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]  # two workers per GPU
    finally:
        wide.close()


def _slot_after(seconds: float) -> dict:
    time.sleep(seconds)
    return worker_slot()


def resexp_cli(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "resexp", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def wait_for(predicate, timeout: float = 240) -> None:
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.2)


def status(job: Path) -> dict:
    try:
        return json.loads((job / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_a_grid_on_the_pool_stopped_by_sigterm_continues(tmp_path):
    sweep = tmp_path / "grid"
    args = ["-m", "hydra/launcher=pool", "hydra.launcher.workers=2", f"hydra.sweep.dir={sweep}", *TINY,
            "trainer.epochs=1,20"]
    p = resexp_cli(*args, cwd=tmp_path)
    # job 0 (1 epoch) completes; job 1 (20 epochs) is stopped after its second or so
    wait_for(lambda: status(sweep / "0").get("status") == "completed"
             and len(status(sweep / "1").get("history", [])) >= 2)
    os.kill(p.pid, signal.SIGTERM)
    out = p.communicate(timeout=240)[0]
    assert p.returncode == 130, out
    assert status(sweep / "1")["status"] == "interrupted" and (sweep / "1/checkpoints/last.pt").is_file()
    done = (sweep / "0/metrics.json").stat().st_mtime
    for job in (0, 1):  # each job ran on its worker's device, recorded in run_info.json
        assert json.loads((sweep / f"{job}/run_info.json").read_text())["device"] == "cpu"

    p = resexp_cli(*args, cwd=tmp_path)
    out = p.communicate(timeout=240)[0]
    assert p.returncode == 0, out
    assert "job #0 completed in an earlier run of this sweep: kept" in out
    assert (sweep / "0/metrics.json").stat().st_mtime == done  # not run again
    resumed = status(sweep / "1")
    assert resumed["status"] == "completed" and len(resumed["history"]) == 20
    assert resumed["resumed_from"] == str(sweep / "1/checkpoints/last.pt")


@pytest.mark.slow
def test_a_search_on_the_pool_killed_with_sigkill_continues(tmp_path):
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "search"
    # threads=1: one worker would take both cores (2 OpenMP threads), which wait for each other at every op
    # while the other test worker runs (epochs of 0.3 s took 7 s). 8 epochs: trial 0 is still running when
    # the kill lands after its second
    args = ["-m", "hparams_search=digits_optuna", "hydra/launcher=pool", "hydra.launcher.workers=1",
            "hydra.launcher.threads=1", f"hydra.sweep.dir={sweep}", *TINY, "trainer.epochs=8",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.name=none", "model=resnet20"]
    p = resexp_cli(*args, cwd=tmp_path)
    wait_for(lambda: len(status(sweep / "0").get("history", [])) >= 2)
    os.killpg(p.pid, signal.SIGKILL)  # the sweep and its worker, without a word
    p.communicate(timeout=60)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep / "optuna.journal")))
    before = optuna.load_study(study_name="digits_search", storage=storage).trials
    assert [t.state.name for t in before] == ["RUNNING"]

    p = resexp_cli(*args, cwd=tmp_path)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    after = optuna.load_study(study_name="digits_search", storage=storage).trials
    assert [t.state.name for t in after] == ["COMPLETE", "COMPLETE"]
    assert after[0].params == before[0].params  # the killed trial resumed with its own parameters
    m = status(sweep / "0")
    assert m["resumed_from"] == str(sweep / "0/checkpoints/last.pt") and len(m["history"]) == 8
