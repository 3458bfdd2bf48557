"""The trainer end to end on CPU: files written, metrics, resume, signals, errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resexp.config import compose
from resexp.data import build_data
from resexp.errors import CheckpointError, DiskFullError
from resexp.train import checkpoint as ckpt
from resexp.train import run
from resexp.train.trainer import NonFiniteLoss

# A small, quick, learnable job: 2 stages of 1 basic block on 16x16 synthetic images.
TINY = [
    "model=resnet20", "model.stages.depths=[1,1]", "model.stages.widths=[8,16]", "model.stages.strides=[1,2]",
    "data=synthetic", "data.num_samples=384", "data.image_size=16", "data.num_classes=4", "data.batch_size=32",
    "optimizer=sgd", "optimizer.lr=0.05", "scheduler=cosine", "trainer.epochs=3", "trainer.progress=false",
    "trainer.report=false",
]


def tiny(*extra: str):
    return compose([*TINY, *extra])


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_same_last(run_a: Path, run_b: Path) -> None:
    a, b = weights(run_a / "checkpoints/last.pt"), weights(run_b / "checkpoints/last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_writes_checkpoints_metrics_and_tensorboard(tmp_path):
    best = run(tiny(), run_dir=tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert best == metrics["best"]["val_acc"] and 0.0 <= best <= 1.0
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"):
        assert all(r[key] is not None for r in metrics["history"]), key
    assert metrics["last"]["epoch"] == 3 and metrics["params"] > 0
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]  # it learns
    best_state = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)
    last_state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert best_state["best"]["epoch"] == metrics["best"]["epoch"]
    assert last_state["epoch"] == 3 and "conv1.weight" in last_state["model"]
    assert best_state["meta"]["num_classes"] == 4 and len(best_state["meta"]["class_names"]) == 4

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # only curves on the Scalars page, grouped so that it opens on train/ and val/ (no hparam/* points)
    assert tags == {"train/loss", "train/acc", "train/lr", "train/throughput", "val/loss", "val/acc", "val/acc5"}
    assert len(events.Scalars("val/acc")) == 3
    assert "config" in str(events.Tags()["tensors"])
    # HParams (the run tb/hparams): the keys this run set away from the defaults and the few every
    # comparison needs
    from tensorboard.plugins.hparams import metadata

    row = EventAccumulator(str(tmp_path / "tb" / "hparams"))
    row.Reload()
    start = metadata.parse_session_start_info_plugin_data(
        row.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG])
    shown = set(start.hparams)
    assert {"data.name", "data.num_samples", "model.stages.depths", "optimizer.lr", "seed"} <= shown
    assert not shown & {"trainer.precision", "trainer.monitor", "optimizer.momentum"}  # defaults here
    assert start.hparams["data.name"].string_value == "synthetic"
    assert metadata.EXPERIMENT_TAG not in row.PluginTagToContent(metadata.PLUGIN_NAME)
    # best.pt's re-evaluation: one point at the best epoch, in the run tb/best (a marker on val/acc)
    marker = EventAccumulator(str(tmp_path / "tb" / "best"))
    marker.Reload()
    [point] = marker.Scalars("val/acc")
    assert point.step == metrics["best"]["epoch"] and point.value == pytest.approx(metrics["best"]["val_acc"])


def test_resume_from_last_checkpoint_matches_uninterrupted_run(tmp_path):
    # a constant schedule does not depend on trainer.epochs, so 1 epoch + 2 more equals 3 straight
    run(tiny("scheduler=constant"), run_dir=tmp_path / "full")
    run(tiny("scheduler=constant", "trainer.epochs=1"), run_dir=tmp_path / "first")
    run(tiny("scheduler=constant", f"trainer.resume={tmp_path / 'first'}"), run_dir=tmp_path / "second")
    assert_same_last(tmp_path / "full", tmp_path / "second")
    # the same seed gives the same metrics, whether the run was resumed or not
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]
    full, second = (json.loads((tmp_path / d / "metrics.json").read_text())["history"] for d in ("full", "second"))
    assert [r["epoch"] for r in second] == [1, 2, 3] and strip(full) == strip(second)


def test_resume_auto_finds_the_run_with_the_same_config(tmp_path):
    outputs = tmp_path / "outputs"
    run(tiny("trainer.epochs=1"), run_dir=outputs / "2026-01-01" / "00-00-00-000001")
    run(tiny("trainer.epochs=1", "seed=5"), run_dir=outputs / "2026-01-01" / "00-00-00-000002")  # other config
    run(tiny("trainer.resume=auto"), run_dir=outputs / "2026-01-01" / "00-00-00-000003")
    metrics = json.loads((outputs / "2026-01-01/00-00-00-000003/metrics.json").read_text())
    assert metrics["resumed_from"].endswith("00-00-00-000001/checkpoints/last.pt")


def test_training_features_run_together(tmp_path):
    extra = ["trainer.ema_decay=0.9", "trainer.mixup_alpha=0.2", "trainer.cutmix_alpha=1.0", "trainer.accumulate=2",
             "trainer.label_smoothing=0.1", "trainer.grad_clip=1.0", "trainer.channels_last=true",
             "trainer.precision=bf16", "trainer.tta_flip=true", "scheduler.warmup_epochs=1", "trainer.epochs=2"]
    run(tiny(*extra), run_dir=tmp_path)
    last = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    batches = len(build_data(tiny().data).train)
    assert last["ema"] is not None and last["global_step"] == 2 * math.ceil(batches / 2)  # 2 batches per step


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch, caplog):
    def broken_compile(module, **kw):
        def fail(*a, **k):
            raise RuntimeError("no compiler here")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    run(tiny("trainer.compile=true", "trainer.epochs=1"), run_dir=tmp_path)
    assert "torch.compile failed" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"


def test_compile_modes_cuda_graphs_for_training_only(tmp_path, monkeypatch):
    modes, steps = [], []
    monkeypatch.setattr(torch, "compile", lambda module, mode: modes.append(mode) or module)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    run(tiny("trainer.compile=true", "trainer.compile_mode=reduce-overhead", "trainer.epochs=1"), run_dir=tmp_path)
    assert modes == ["default", "reduce-overhead"]  # evaluation, then the training step
    assert len(steps) == len(build_data(tiny().data).train)  # each step tells the graph trees it is new
    modes.clear()
    run(tiny("trainer.compile=true", "trainer.compile_mode=max-autotune", "trainer.epochs=1"), run_dir=tmp_path / "b")
    assert modes == ["max-autotune-no-cudagraphs", "max-autotune"]


def test_early_stopping_ends_the_run(tmp_path):
    # lr 0 never improves after the first validation
    run(tiny("optimizer.lr=0", "trainer.epochs=10", "trainer.early_stopping_patience=2"), run_dir=tmp_path)
    assert len(json.loads((tmp_path / "metrics.json").read_text())["history"]) == 3


def test_nan_loss_stops_with_a_clear_message_and_keeps_best(tmp_path, monkeypatch):
    run(tiny("trainer.epochs=1"), run_dir=tmp_path)
    best_before = (tmp_path / "checkpoints/best.pt").read_bytes()
    last_before = (tmp_path / "checkpoints/last.pt").read_bytes()
    # the run, continued in its directory, diverges in its second epoch
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward",
                        lambda self, logits, target: torch.nn.functional.cross_entropy(logits, target) * math.inf)
    with pytest.raises(NonFiniteLoss, match="NaN/Inf"):
        run(tiny("trainer.epochs=2", f"trainer.resume={tmp_path}"), run_dir=tmp_path)
    assert (tmp_path / "checkpoints/best.pt").read_bytes() == best_before
    assert (tmp_path / "checkpoints/last.pt").read_bytes() == last_before
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "NaN/Inf" in metrics["error"]


def test_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    run(tiny("trainer.epochs=1"), run_dir=tmp_path / "a")
    with pytest.raises(CheckpointError, match="the run was model.num_classes=4, data.num_classes=4; now 3, 3. .*"
                                              "trainer.finetune_from="):
        run(tiny("data.num_classes=3", f"trainer.resume={tmp_path / 'a'}"), run_dir=tmp_path / "b")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(tiny(f"trainer.resume={tmp_path / 'nothing'}"), run_dir=tmp_path / "c")


def test_finetune_loads_backbone_only(tmp_path):
    run(tiny("trainer.epochs=1"), run_dir=tmp_path / "a")
    cfg = tiny("data.num_classes=3", "trainer.epochs=1", "optimizer.lr=0",
               f"trainer.finetune_from={tmp_path / 'a/checkpoints/last.pt'}")
    run(cfg, run_dir=tmp_path / "b")
    a, b = weights(tmp_path / "a/checkpoints/last.pt"), weights(tmp_path / "b/checkpoints/last.pt")
    assert torch.equal(a["conv1.weight"], b["conv1.weight"]) and b["fc.weight"].shape[0] == 3


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"x": torch.ones(2)}, path)

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(DiskFullError, match=f"^no space left on /.* while writing {path} "):
        ckpt.atomic_save({"x": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_unwritable_checkpoint_dir_raises(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(PermissionError):
        ckpt.atomic_save({"x": torch.ones(1)}, tmp_path / "ro" / "best.pt")


# --- the command line: signals and kills in a real process ---------------------------------------
SLOW_TINY = [*TINY, "data.num_samples=1024"]


def cli(cwd: Path, *extra: str) -> subprocess.Popen:
    """`python -m resexp` on the slow tiny job, started in cwd (run directory: outputs/<date>/<time>)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "resexp", *SLOW_TINY, *extra], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def wait_for(find, proc: subprocess.Popen, timeout: float = 120):
    """Polls find() until it returns something, while proc runs."""
    deadline = time.time() + timeout
    while not (found := find()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.02)
    return found


def run_dir_of(cwd: Path, override: str):
    """The run directory whose .hydra/overrides.yaml has `override`, or None yet."""
    for d in cwd.glob("outputs/*/*"):
        f = d / ".hydra" / "overrides.yaml"
        if f.is_file() and override in f.read_text():
            return d
    return None


@pytest.mark.slow
def test_two_runs_started_together_then_sigkill_or_sigterm_and_resume_end_with_the_uninterrupted_weights(
        tmp_path):
    # Two runs of one job start at once in one project (one thread each), told apart by an override
    # that does not change the job; the uninterrupted reference runs in this process meanwhile.
    marks = {"killed": "seed=0", "stopped": "trainer.deterministic=false"}
    procs = {name: cli(tmp_path, mark) for name, mark in marks.items()}
    dirs = {name: wait_for(lambda m=mark: run_dir_of(tmp_path, m), procs[name]) for name, mark in marks.items()}
    assert dirs["killed"] != dirs["stopped"]  # a directory each, named to the microsecond
    assert all(len(d.name) == len("HH-MM-SS-ffffff") for d in dirs.values())

    # Each is stopped as soon as its own epoch 1 is done (last.pt written), into epoch 2, maybe mid-write
    # of a checkpoint: waiting for one run first let the other finish all its epochs (a CI failure)
    signals, deadline = {"stopped": signal.SIGTERM, "killed": signal.SIGKILL}, time.time() + 120
    while signals:
        for name in list(signals):
            assert procs[name].poll() is None, f"{name} ended before its signal: {procs[name].stdout.read()}"
            if (dirs[name] / "checkpoints/last.pt").exists():
                procs[name].send_signal(signals.pop(name))
        assert time.time() < deadline
        time.sleep(0.01)
    outputs = {name: proc.communicate()[0] for name, proc in procs.items()}

    assert procs["killed"].returncode == -signal.SIGKILL, outputs["killed"]
    torch.load(dirs["killed"] / "checkpoints/last.pt", weights_only=True)  # still readable
    assert procs["stopped"].returncode != 0
    assert "trainer.resume=" in outputs["stopped"] and "Traceback" not in outputs["stopped"]
    state = torch.load(dirs["stopped"] / "checkpoints/last.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) != (3, 0)  # stopped mid-run

    # the resumes in this process: the checkpoints a kill and a stop left are what is tested, and two more
    # interpreters cost more than the runs (the command line's resume: test_faults.py)
    run(compose(SLOW_TINY), run_dir=tmp_path / "uninterrupted")
    for name in procs:
        run(compose([*SLOW_TINY, f"trainer.resume={dirs[name]}"]), run_dir=tmp_path / name)
        assert_same_last(tmp_path / "uninterrupted", tmp_path / name)


def test_ema_is_the_running_average_of_the_weights_and_keeps_its_place_in_best_pt(tmp_path):
    from resexp.train.ema import EMA

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(net, decay=0.75)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(4.0)
    net(torch.randn(8, 3))  # BatchNorm: running stats and num_batches_tracked move
    ema.update(step=0)
    assert torch.allclose(ema.module[0].weight, start + 0.25 * 4.0)  # 0.75 * old + 0.25 * new
    assert ema.module[1].num_batches_tracked.item() == 1  # integers are copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters())
    # an EMA saved by torch's AveragedModel (resexp 0.1's last.pt) loads into it
    from torch.optim.swa_utils import AveragedModel

    old = AveragedModel(net, use_buffers=True).state_dict()
    EMA(net, decay=0.75).load_state_dict(old)

    run(tiny("trainer.ema_decay=0.9", "trainer.val_every=3"), run_dir=tmp_path)  # only the last epoch is judged
    best = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)["model"]
    last = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(best[k], last["ema"][f"module.{k}"]) for k in best)
    assert not torch.equal(best["fc.weight"], last["model"]["fc.weight"])  # the average, not the weights


def test_ema_warmup_forgets_the_random_start_of_a_short_run():
    from resexp.train.ema import EMA

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 4)
    plain, warm = EMA(net, decay=0.999), EMA(net, decay=0.999, warmup=True)
    assert [warm.decay_at(t) for t in (0, 7)] == [0.0, 0.75] and warm.decay_at(10**6) == 0.999
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)  # the model moves away from its start and stays there
    for step in range(300):
        plain.update(step)
        warm.update(step)
    # 300 steps at 0.999 keep 74% of the start; the warm-up's first update (decay 0) copies the model
    assert (plain.module.weight - start).mean().item() == pytest.approx(1 - 0.999**300, abs=1e-4)
    assert (warm.module.weight - start).mean().item() > 0.97


def test_ema_decay_outside_0_1_is_a_config_error(tmp_path):
    from resexp.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.ema_decay=1.5 must be between 0 and 1"):
        run(tiny("trainer.ema_decay=1.5"), run_dir=tmp_path)
