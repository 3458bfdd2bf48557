"""Runs that share a machine, a directory or an MLflow store, and what a user sees first when one goes
wrong: each test failed before its fix (issue 23). Races run as real processes held at a start line
until all have imported everything, then let go together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

TINY = ["data=synthetic", "data.num_samples=64", "data.image_size=8", "data.batch_size=16", "data.num_classes=4",
        "model.stages.depths=[1,1,1]", "trainer.progress=false", "trainer.report=false", "trainer.device=cpu"]

# a process that imports what it needs, says so, waits for the start line, then runs `code`
STARTER = """
import sys, time
from pathlib import Path
{imports}
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.write_text("")
while not go.exists():
    time.sleep(0.002)
{code}
"""


def together(tmp_path: Path, n: int, imports: str, code: str, args=lambda i: []) -> list[subprocess.CompletedProcess]:
    """Start `n` processes, let them go at once when all are ready; their results, in order."""
    script = STARTER.format(imports=imports, code=code)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"ready{i}"), str(go), *args(i)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    go.write_text("")
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


# ------------------------------------------------------------------ 1. one run directory, claimed once
@pytest.mark.slow
def test_runs_started_together_into_one_directory_one_runs_the_others_stop_in_one_line(tmp_path):
    d = tmp_path / "run"
    code = "import resexp.__main__ as cli\nsys.argv = ['resexp', *sys.argv[3:]]\ncli.main()"
    results = together(tmp_path, 2, "import resexp.__main__, resexp.train.run", code,
                       args=lambda i: [*TINY, "trainer.epochs=1", f"seed={i + 1}", f"hydra.run.dir={d}"])
    codes = [r.returncode for r in results]
    assert sorted(codes) == [0, 2], [r.stderr[-2000:] for r in results]
    for r in results:
        if r.returncode == 2:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and str(d) in lines[0] and "hydra.run.dir=..." in lines[0], lines
    winner = codes.index(0) + 1
    # the records in the directory are all the winner's: Hydra's, the checkpoint's and metrics.json
    assert f"seed={winner}" in OmegaConf.load(d / ".hydra" / "overrides.yaml")
    assert OmegaConf.load(d / ".hydra" / "config.yaml").seed == winner
    assert json.loads((d / "metrics.json").read_text())["status"] == "completed"


# ------------------------------------------------------------------ 2. a new MLflow store, opened at once
@pytest.mark.slow
def test_a_new_mlflow_store_opened_by_runs_started_together_works_for_all_and_later_runs(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    connect = ("from omegaconf import OmegaConf\n"
               "cfg = OmegaConf.create({'tracking_uri': None, 'experiment': 'resexp'})\n"
               "client, uri, experiment = MLflowTracker._connect(cfg)\n"
               "client.create_run(experiment, run_name=sys.argv[3])\n")
    results = together(tmp_path, 2, "from resexp.trackers.mlflow import MLflowTracker", connect,
                       args=lambda i: [f"run{i}"])
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-1500:] for r in results]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resexp")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1"]
    # model training, not the GenAI view; and no page of Alembic's migration lines
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert all("alembic" not in r.stderr.lower() for r in results), results[0].stderr


# ------------------------------------------------------------------ 5, 8, 9: one line, nothing written
def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("n", [0, -1, 3])
def test_a_class_count_the_data_does_not_have_is_one_line_before_training(tmp_path, in_process, capsys, n):
    d = tmp_path / "run"
    assert in_process(tmp_path, *TINY, f"model.num_classes={n}", f"hydra.run.dir={d}") == 2
    line = one_line(capsys)
    assert line.startswith(f"error: model.num_classes={n}") and "4 classes" in line, line
    assert not (d / "checkpoints").exists() and not (d / "metrics.json").exists()


def test_resuming_a_completed_run_says_there_is_nothing_to_train_and_how_to_extend_it(tmp_path, in_process, capsys):
    first = tmp_path / "first"
    assert in_process(tmp_path, *TINY, "trainer.epochs=2", f"hydra.run.dir={first}") == 0
    capsys.readouterr()
    d = tmp_path / "again"  # fewer epochs than the run has (the same number is refused alike)
    assert in_process(tmp_path, *TINY, "trainer.epochs=1", f"trainer.resume={first}", f"hydra.run.dir={d}") == 2
    line = one_line(capsys)
    assert "has trained 2 epochs" in line and "trainer.epochs=1 leaves nothing to train" in line, line
    assert f"trainer.resume={first}" in line and "trainer.epochs=" in line.split("longer")[1], line
    assert not (d / "checkpoints").exists() and not (d / "metrics.json").exists()
    assert in_process(tmp_path, *TINY, "trainer.epochs=3", f"trainer.resume={first}", f"hydra.run.dir={first}") == 0
    assert json.loads((first / "metrics.json").read_text())["last"]["epoch"] == 3


def test_mode_flags_long_names_and_unquoted_unicode_are_one_line(tmp_path, in_process, capsys):
    assert in_process(tmp_path, "-m", "--cfg", "job") == 2
    assert "--cfg and --multirun cannot be combined" in one_line(capsys)

    long_dir = tmp_path / ("x" * 300)
    assert in_process(tmp_path, *TINY, f"hydra.run.dir={long_dir}") == 2
    line = one_line(capsys)
    assert line.startswith("error: hydra.run.dir: file name too long: ") and len(line) < 300, line

    assert in_process(tmp_path, "data=mnist", "trainer.device=cpu", "data.root=" + "y" * 20000,
                      f"hydra.run.dir={tmp_path / 'r'}") == 2
    line = one_line(capsys)
    assert line.startswith("error: data.root: file name too long: yyy") and " characters); " in line and len(line) < 300, line

    assert in_process(tmp_path, *TINY, "model.name=résnet", f"hydra.run.dir={tmp_path / 'u'}") == 2
    assert "cannot read the override 'model.name=résnet': quote" in one_line(capsys)
