"""Sweeps: failing jobs are recorded and the sweep goes on, the sweep report, the report command,
the joblib and submitit launchers (the pool launcher: test_pool.py; the Optuna search: test_search.py)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from resexp.reports import sweep as report

# A job of a few seconds: 3 stages of 1 block on 8x8 synthetic images, one epoch of 3 batches.
TINY = ["data=synthetic", "data.num_samples=64", "data.image_size=8", "data.batch_size=16",
        "model.stages.depths=[1,1,1]", "trainer.epochs=1", "trainer.progress=false", "trainer.report=false"]


def resexp_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "resexp", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def sweep_dir(cwd: Path) -> Path:
    (d,) = cwd.glob("outputs/multirun/*/*")
    return d


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fake_metrics(run_dir: Path, accs: list[float], train_accs: list[float] | None = None, **extra) -> None:
    history = [{"epoch": i + 1, "train_loss": 1.0, "train_acc": (train_accs or accs)[i], "val_loss": 1.0,
                "val_acc": a, "lr": 0.1, "seconds": 1.5, "images_per_s": 100.0} for i, a in enumerate(accs)]
    best = max(history, key=lambda r: r["val_acc"])
    metrics = {"status": "completed", "best": {"epoch": best["epoch"], "val_acc": best["val_acc"]},
               "last": history[-1], "history": history, "params": 1234, **extra}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


# --- failures inside a sweep: recorded, the sweep goes on, non-zero exit at the end ----------------
@pytest.mark.slow
def test_failing_jobs_are_recorded_and_the_other_jobs_still_run(tmp_path, monkeypatch, in_process, capsys):
    from hydra.core.hydra_config import HydraConfig

    from resexp.train.trainer import NonFiniteLoss

    failures = {
        1: RuntimeError("boom\nsecond line"),
        2: SystemExit(3),
        3: NonFiniteLoss("the training loss became NaN/Inf in epoch 1"),
        4: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    }
    ran = []

    def fake_run(cfg, run_dir=None):
        ran.append(cfg.seed)
        if cfg.seed in failures:
            raise failures[cfg.seed]
        fake_metrics(Path(HydraConfig.get().runtime.output_dir), [0.5, 0.75])
        return 0.75

    monkeypatch.setattr("resexp.train.run", fake_run)
    code = in_process(tmp_path, "-m", "seed=0,1,2,3,4,5")
    err = capsys.readouterr().err
    assert code == 1
    assert ran == [0, 1, 2, 3, 4, 5]  # every job ran
    assert "4 of 6 sweep jobs did not complete" in err and all(f"#{n} (seed={n})" in err for n in (1, 2, 3, 4))
    root = sweep_dir(tmp_path)
    expected = {1: "RuntimeError: boom", 2: "SystemExit: 3", 3: "NonFiniteLoss: the training loss",
                4: "OutOfMemoryError: CUDA out of memory"}
    for n, text in expected.items():
        metrics = json.loads((root / str(n) / "metrics.json").read_text())
        assert metrics["status"] == "failed" and metrics["error"].startswith(text), metrics
        assert "Traceback" in (root / str(n) / "error.log").read_text()
    rows = read_csv(root / "sweep_summary.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert [r["status"] for r in rows] == ["completed"] + ["failed"] * 4 + ["completed"]
    assert rows[0]["best_val_acc"] == "0.7500" and rows[0]["best_epoch"] == "2" and rows[0]["overrides"] == "seed=0"
    assert rows[2]["error"] == "SystemExit: 3"
    md = (root / "sweep_summary.md").read_text()
    assert "| 5 | seed=5 | completed | 2 | 75.00% | 75.00% | 1,234 |" in md
    assert (root / "sweep_val_acc.png").stat().st_size > 0


def test_a_job_stopped_after_its_record_says_completed_is_kept_when_the_sweep_runs_again(
        tmp_path, monkeypatch, in_process):
    from hydra.core.hydra_config import HydraConfig

    from resexp.train.signals import StopNow

    ran = []

    def completed_then_stopped(cfg, run_dir=None):  # SIGTERM in the trackers' end, after metrics.json
        ran.append(cfg.seed)
        fake_metrics(Path(HydraConfig.get().runtime.output_dir), [0.5, 0.75])
        raise StopNow(signal.SIGTERM)

    sweep = tmp_path / "sweep"
    monkeypatch.setattr("resexp.train.run", completed_then_stopped)
    assert in_process(tmp_path, "-m", f"hydra.sweep.dir={sweep}", "seed=0,1") == 130
    assert ran == [0] and json.loads((sweep / "0/metrics.json").read_text())["status"] == "completed"

    def completed(cfg, run_dir=None):
        ran.append(cfg.seed)
        fake_metrics(Path(HydraConfig.get().runtime.output_dir), [0.5, 0.75])
        return 0.75

    monkeypatch.setattr("resexp.train.run", completed)
    assert in_process(tmp_path, "-m", f"hydra.sweep.dir={sweep}", "seed=0,1") == 0
    assert ran == [0, 1]  # job 0 kept as it was, not run (nor resumed) again
    assert json.loads((sweep / "0/metrics.json").read_text())["status"] == "completed"


def test_single_run_errors_stay_one_line_with_exit_2(tmp_path, monkeypatch, in_process, capsys):
    from resexp.train.trainer import NonFiniteLoss

    def fake_run(cfg, run_dir=None):
        raise NonFiniteLoss("the training loss became NaN/Inf in epoch 1")

    monkeypatch.setattr("resexp.train.run", fake_run)
    assert in_process(tmp_path, f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert capsys.readouterr().err.strip() == "error: the training loss became NaN/Inf in epoch 1"


def test_missing_plugin_names_the_extra(tmp_path, monkeypatch, in_process, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_joblib") else real(name, *a))
    assert in_process(tmp_path, "-m", "hydra/launcher=parallel") == 2
    assert "pip install 'resexp[joblib]'" in capsys.readouterr().err


# --- real jobs in parallel processes (joblib): a NaN stop in one; the report command ------------------
@pytest.mark.slow
def test_joblib_sweep_with_a_nan_job_and_the_report_command(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = resexp_cli("-m", "hydra/launcher=parallel", "optimizer.lr=1e30,0.05",
                     "optimizer.momentum=0", *TINY, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "1 of 2 sweep jobs did not complete: #0 (optimizer.lr=1e+30): failed - NonFiniteLoss" in out.stderr
    root = sweep_dir(tmp_path)
    rows = read_csv(root / "sweep_summary.csv")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "completed")]
    r = rows[1]
    assert 0 <= float(r["best_val_acc"]) <= 1 and int(r["params"]) > 0 and float(r["wall_s"]) > 0
    assert r["best_epoch"] == "1" and r["final_val_acc"] and r["dir"] == "1"
    assert (root / "1/checkpoints/best.pt").is_file() and (root / "sweep_val_acc.png").is_file()

    # the report command rebuilds the same summary, for the sweep or for chosen run directories
    (root / "sweep_summary.csv").unlink()
    again = subprocess.run([sys.executable, "-m", "resexp.report", str(root)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert read_csv(root / "sweep_summary.csv") == rows and "| 0 | optimizer.lr=1e+30 | failed |" in again.stdout
    picked = subprocess.run([sys.executable, "-m", "resexp.report", str(root / "1"), "--out", str(tmp_path / "one")],
                            capture_output=True, text=True)
    assert picked.returncode == 0, picked.stderr
    assert [r["job"] for r in read_csv(tmp_path / "one/sweep_summary.csv")] == ["1"]


def test_report_command_errors_are_one_line(tmp_path):
    for args in ([str(tmp_path / "nope")], [str(tmp_path)]):
        out = subprocess.run([sys.executable, "-m", "resexp.report", *args], capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr


def test_report_shows_the_degradation_gap(tmp_path):
    base = {"model": {"name": None, "block": {"name": None}, "stages": {"depths": [3, 3, 3]}}, "seed": 0}
    for i, (net, block, train) in enumerate([("resnet20", "basic_pad", 0.99), ("resnet20", "plain_basic", 0.97),
                                             ("resnet56", "basic_pad", 0.995), ("resnet56", "plain_basic", 0.90)]):
        job = tmp_path / str(i)
        fake_metrics(job, [0.9, 0.95], [0.8, train])
        cfg = {**base, "model": {**base["model"], "name": net, "block": {"name": block}}}
        (job / ".hydra").mkdir()
        (job / ".hydra/config.yaml").write_text(yaml.safe_dump(cfg))
        (job / ".hydra/overrides.yaml").write_text(yaml.safe_dump([f"model={net}", f"model/block={block}"]))
    jobs = report.collect_jobs([tmp_path])
    gaps = report.degradation_gaps(jobs)
    assert [(g["network"], round(100 * g["gap"], 2)) for g in gaps] == [("resnet20", 2.0), ("resnet56", 9.5)]
    paths = report.build_report(jobs, tmp_path)
    md = (tmp_path / "sweep_summary.md").read_text()
    assert "## Degradation" in md and "| resnet56 | basic_pad | plain_basic | 0.50% | 10.00% | +9.50 |" in md
    assert tmp_path / "sweep_train_error.png" in paths


# --- submitit (local executor): the launcher used for SLURM ------------------------------------------------
@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # job 1 fails (too few samples for 10 classes) in its own process; job 0 completes
    out = resexp_cli("-m", "hydra/launcher=local", *TINY, "data.num_samples=64,5", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "#1 (data.num_samples=5): failed - ConfigError" in out.stderr
    root = sweep_dir(tmp_path)
    assert [r["status"] for r in read_csv(root / "sweep_summary.csv")] == ["completed", "failed"]
    assert list((root / ".submitit").iterdir())  # the jobs went through submitit
