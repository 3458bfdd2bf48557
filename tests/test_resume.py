"""Resume is exact wherever a run stops: a stop signal inside a gradient-accumulation window, and a
crash between two mid-epoch checkpoints (trainer.checkpoint_every_n_steps), end with the same last.pt
(weights, optimizer, schedule, EMA, grad scaler, RNG states) and history as the run never stopped."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from resexp.config import compose
from resexp.errors import ConfigError
from resexp.train import run
from resexp.train.signals import Interrupted
from resexp.train.trainer import Trainer

# 51 train images in 13 batches of 4; accumulate=3: optimizer steps after batches 3, 6, 9, 12 and 13
# (a window of one) of each epoch, 5 a epoch; last.pt every 3 steps: at step 3 (epoch 1, batch 9),
# 6 (epoch 2, batch 3), 9 (epoch 2, batch 12), 12 (epoch 3, batch 6) and at each epoch's end.
# Everything resume must carry: EMA, fp16 with its grad scaler, mixup's RNG draws, a per-step
# cosine schedule.
JOB = ["data=synthetic", "data.num_samples=64", "data.image_size=8", "data.num_classes=4", "data.batch_size=4",
       "model.stages.depths=[1,1,1]", "scheduler=cosine", "trainer.epochs=3", "trainer.accumulate=3",
       "trainer.ema_decay=0.9", "trainer.precision=16", "trainer.mixup_alpha=0.4",
       "trainer.checkpoint_every_n_steps=3", "trainer.progress=false", "trainer.report=false"]
TIMINGS = ("seconds", "images_per_s")  # the only history columns that may differ


class Killed(BaseException):
    """A kill -9 stand-in: nothing in resexp catches it, so nothing is saved on the way out."""


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("straight")
    run(compose(JOB), run_dir=d)
    return d


def at_micro_batch(monkeypatch, k: int, act) -> None:
    """`act(trainer)` right after the k-th training micro-batch (1-based, counted over the whole run)."""
    calls = [0]
    step = Trainer.train_step

    def counted(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == k:
            act(self)
        return out

    monkeypatch.setattr(Trainer, "train_step", counted)


def last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/last.pt", weights_only=True)


def assert_equal(a, b, where: str = "last.pt") -> None:
    """Bit for bit: tensors by torch.equal, containers entry by entry, anything else by ==."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


def assert_same_run(straight: Path, resumed: Path) -> None:
    a, b = last(straight), last(resumed)
    assert a["scaler"]["_growth_tracker"] == a["global_step"] and a["ema"] is not None  # both are in use
    for entry in ("model", "ema", "optimizer", "scheduler", "scaler", "rng", "epoch", "batch", "global_step",
                  "best", "bad_evals", "train_acc"):
        assert_equal(a[entry], b[entry], entry)
    strip = lambda run_dir: [{k: v for k, v in row.items() if k not in TIMINGS}  # noqa: E731
                             for row in json.loads((run_dir / "metrics.json").read_text())["history"]]
    assert [r["epoch"] for r in strip(resumed)] == [1, 2, 3] and strip(resumed) == strip(straight)


@pytest.mark.slow
def test_a_stop_inside_an_accumulation_window_finishes_the_window_and_resumes_exactly(
        straight, tmp_path, monkeypatch):
    # SIGTERM after epoch 2's batch 5, inside its window of batches 4-6
    at_micro_batch(monkeypatch, 13 + 5, lambda trainer: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(Interrupted, match="in epoch 2 after batch 6"):
        run(compose(JOB), run_dir=tmp_path / "stopped")
    saved = last(tmp_path / "stopped")
    assert (saved["epoch"], saved["batch"], saved["global_step"]) == (1, 6, 7)  # the window's step was taken
    monkeypatch.undo()
    run(compose([*JOB, f"trainer.resume={tmp_path / 'stopped'}"]), run_dir=tmp_path / "resumed")
    assert_same_run(straight, tmp_path / "resumed")


@pytest.mark.slow
def test_a_crash_mid_epoch_loses_only_the_steps_since_the_last_checkpoint_and_resumes_exactly(
        straight, tmp_path, monkeypatch):
    def kill(trainer):
        raise Killed

    # killed after epoch 2's batch 8: the newest last.pt is step 6's (epoch 2, batch 3), not epoch 1's end
    at_micro_batch(monkeypatch, 13 + 8, kill)
    with pytest.raises(Killed):
        run(compose(JOB), run_dir=tmp_path / "run")
    saved = last(tmp_path / "run")
    assert (saved["epoch"], saved["batch"], saved["global_step"]) == (1, 3, 6)
    monkeypatch.undo()
    # a requeued job: the same command again, in its own directory
    run(compose([*JOB, "trainer.resume=auto"]), run_dir=tmp_path / "run")
    # epoch 2's train loss and accuracy cover all its batches, those before the crash included
    assert_same_run(straight, tmp_path / "run")


def test_checkpoint_every_n_steps_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.checkpoint_every_n_steps=0 must be >= 1"):
        run(compose([*JOB, "trainer.checkpoint_every_n_steps=0"]), run_dir=tmp_path)
