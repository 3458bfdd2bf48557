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
    results = together(tmp_path, 2, "import resexp.__main__, resexp.train.pipeline", code,
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


@pytest.mark.slow
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
    assert line.startswith("error: data.root: file name too long: yyy") and " characters); " in line, line
    assert len(line) < 300, line

    assert in_process(tmp_path, *TINY, "model.name=résnet", f"hydra.run.dir={tmp_path / 'u'}") == 2
    assert "cannot read the override 'model.name=résnet': quote" in one_line(capsys)


# ------------------------------------------------------------------ 3, 4, 6: the MLflow store
@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow store with its tables (creating them takes seconds; tests copy the file)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, empty_store) -> str:
    """A copy of the empty store at ./outputs/mlflow.db, the default place (cwd: tmp_path); its URI."""
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    shutil.copyfile(empty_store, tmp_path / "outputs" / "mlflow.db")
    return f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"


def mlflow_run(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("resexp").experiment_id])
    return run


def test_the_default_store_is_in_the_starting_folders_outputs_and_is_printed(
        tmp_path, in_process, mlflow_store):
    uri = mlflow_store
    elsewhere = tmp_path / "data" / "x" / "run"  # the old rule put the store in data/, two levels up
    assert in_process(tmp_path, *TINY, "trainer.epochs=1", "logger=mlflow", f"hydra.run.dir={elsewhere}") == 0
    assert mlflow_run(uri).info.status == "FINISHED"
    assert not (tmp_path / "data" / "mlflow.db").exists()
    log = (elsewhere / "__main__.log").read_text()
    assert f"MLflow store: {uri} (artifacts: {(tmp_path / 'outputs' / 'mlartifacts').as_uri()}" in log, log


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs root; skips otherwise), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_full_disk_during_the_artifact_upload_still_ends_the_mlflow_run_naming_what_is_missing(
        tmp_path, in_process, mlflow_store, small_disk):
    uri = mlflow_store
    (tmp_path / "outputs" / "mlartifacts").symlink_to(small_disk)
    (small_disk / "filler").write_bytes(b"x" * (64 - 12) * 1024)  # room for a few small files
    d = tmp_path / "run"
    assert in_process(tmp_path, *TINY, "trainer.epochs=1", "trainer.report=true", "logger=mlflow",
                      f"hydra.run.dir={d}") == 0
    run = mlflow_run(uri)
    assert run.info.status == "FINISHED"  # not RUNNING forever
    missing = run.data.tags["missing_artifacts"].split(", ")
    assert missing and all((d / name).is_file() for name in missing), missing
    assert json.loads((d / "metrics.json").read_text())["status"] == "completed"
    log = (d / "__main__.log").read_text()
    assert f"logger=mlflow: {len(missing)} of the run's files were not stored: {missing[0]} (" in log, log


@pytest.mark.parametrize("where", ["server", "read-only folder"])
def test_a_store_that_cannot_be_reached_or_written_is_one_line_within_seconds(tmp_path, in_process, capsys, where):
    pytest.importorskip("mlflow")
    if where == "server":
        uri = "http://127.0.0.1:9"  # the discard port: nothing listens
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            folder.chmod(0o500)
            if os.access(folder, os.W_OK):
                pytest.skip("cannot make a read-only folder here (root without chattr)")
        uri = f"sqlite:///{folder / 'mlflow.db'}"
    start = time.monotonic()
    try:
        code = in_process(tmp_path, *TINY, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}",
                          f"hydra.run.dir={tmp_path / 'run'}")
    finally:
        if where != "server":
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    assert code == 2 and time.monotonic() - start < 20
    line = one_line(capsys)
    assert line.startswith("error: logger=mlflow") and str(uri.split("///")[-1]) in line, line


# ------------------------------------------------------------------ 7. a warm-up as long as the run
def lrs(overrides: list[str], epochs: int, steps: int = 10) -> list[float]:
    import torch

    from resexp.config import compose
    from resexp.optim import build_scheduler

    cfg = compose([f"trainer.epochs={epochs}", *overrides])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    scheduler, out = build_scheduler(opt, cfg.scheduler, epochs=epochs, steps_per_epoch=steps), []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


def test_a_warm_up_longer_than_half_the_run_is_cut_to_half_and_said_with_the_numbers(caplog):
    with caplog.at_level("WARNING", logger="resexp"):
        long = lrs(["scheduler.warmup_epochs=50"], epochs=2)
    assert max(long) == pytest.approx(0.1) and long.index(max(long)) == 10 and long[-1] < 0.005
    assert "scheduler.warmup_epochs=50 is more than half the run (trainer.epochs=2): the run would end still " \
           "warming up, at 0.136 x optimizer.lr and never decay; it warms up over the first half instead (1 epoch)" \
           in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="resexp"):
        smoke = lrs([], epochs=1)  # the default 1-epoch warm-up in a 1-epoch run: no longer ends at its peak
    assert max(smoke) == pytest.approx(0.1) and smoke.index(max(smoke)) == 5 and smoke[-1] < 0.01
    assert "the run would end at its peak rate" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="resexp"):
        ten = lrs([], epochs=10)  # a warm-up of at most half the run: as set
    assert ten.index(max(ten)) == 10 and "warmup" not in caplog.text


# ------------------------------------------------------------------ the dashboards a user opens first
@pytest.mark.slow
def test_a_sweep_reads_at_a_glance_in_mlflow_tensorboard_hparams_and_its_plot(tmp_path, in_process, mlflow_store,
                                                                              monkeypatch):
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    plotted = {}
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: (
        plotted.__setitem__(Path(path).name, [y for line in fig.axes[0].lines for y in line.get_ydata()]),
        save(fig, path, **kw))[1])
    sweep = tmp_path / "outputs" / "multirun" / "s"
    assert in_process(tmp_path, "-m", *TINY, "trainer.epochs=1", "logger=[tensorboard,mlflow]",
                      "trainer.deterministic=false", "optimizer.lr=0.05,0.1", f"hydra.sweep.dir={sweep}") == 0

    client = MlflowClient(tracking_uri=mlflow_store)
    experiment = client.get_experiment_by_name("resexp")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view
    parent, *jobs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    assert [j.info.run_name for j in jobs] == ["optimizer.lr=0.05 · multirun/s/0", "optimizer.lr=0.1 · multirun/s/1"]
    command = jobs[0].data.tags["command"]
    assert "optimizer.lr=0.05" in command and "0.05,0.1" not in command and " -m " not in command, command
    params = jobs[0].data.params
    assert params["trainer.deterministic"] == "false" and params["model.pretrained"] == "null"

    # TensorBoard's HParams: the row named by what differs; its first five metrics are validation scores
    events = EventAccumulator(str(sweep / "0" / "tb" / "hparams"))
    events.Reload()
    start = events.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    assert HParamsPluginData.FromString(start).session_start_info.group_name == "optimizer.lr=0.05 · multirun/s/0"
    metrics = sorted(events.Tags()["scalars"])
    assert metrics[:5] == ["best/epoch", "best/val_acc", "best/val_acc5", "best/val_loss", "val/acc"], metrics
    assert not [t for t in metrics if t.startswith("train/")]

    assert plotted["sweep_val_acc.png"] and all(0 <= y <= 1 for y in plotted["sweep_val_acc.png"])  # fractions


# ------------------------------------------------------------------ noise
def test_characters_no_font_has_are_said_once_not_once_a_glyph(caplog, recwarn):
    import torch

    from resexp.reports import figures

    figures._told_missing = False
    with caplog.at_level("WARNING", logger="resexp"):
        for _ in range(2):
            figures.render(figures.confusion(torch.eye(3, dtype=torch.long), ["猫", "犬", "кошка"]))
    from matplotlib import font_manager

    if {"Noto Sans CJK JP", "WenQuanYi Zen Hei"} & {f.name for f in font_manager.fontManager.ttflist}:
        assert "no installed font" not in caplog.text  # a font that has them is used
    else:
        said = [r for r in caplog.records if "no installed font has (猫犬)" in r.message]
        assert len(said) == 1, caplog.text
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


def test_unreadable_images_skipped_are_said_once(tmp_path, in_process):
    from test_faults import make_images

    root = make_images(tmp_path / "imgs", per_class=6)
    (root / "a" / "bad.png").write_bytes(b"not an image")
    d = tmp_path / "run"
    assert in_process(tmp_path, "data=image_folder", f"data.root={root}", "data.image_size=8", "data.val_split=0.25",
                      "data.on_bad_file=skip", "data.batch_size=4", "model.stages.depths=[1,1,1]",
                      "trainer.epochs=1", "trainer.progress=false", "trainer.report=false", "trainer.device=cpu",
                      f"hydra.run.dir={d}") == 0
    log = (d / "__main__.log").read_text()
    said = [line for line in log.splitlines() if "WARNING" in line and "unreadable" in line]
    assert len(said) == 1 and "skipping 1 unreadable image file(s)" in said[0] and "bad.png" in said[0], log
