"""Resume exact at any point: a run stopped at a chosen step (inside a gradient-accumulation window,
with an EMA, mixup, a cosine schedule and the grad scaler) or killed after a periodic last.pt
(`trainer.checkpoint_every_n_steps`) continues to the uninterrupted run's state, bit for bit on CPU."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from resexp.config import compose
from resexp.train import run
from resexp.train.checkpoint import Checkpoints
from resexp.train.signals import Interrupted
from resexp.train.trainer import Trainer

# 208 of 256 images train: 13 micro-batches of 16 per epoch
JOB = ["model=resnet20", "model.stages.depths=[1,1]", "model.stages.widths=[8,16]", "model.stages.strides=[1,2]",
       "data=synthetic", "data.num_samples=256", "data.image_size=8", "data.num_classes=4", "data.batch_size=16",
       "optimizer.lr=0.05", "trainer.epochs=2", "trainer.progress=false", "trainer.report=false"]
PARTS = ("model", "ema", "optimizer", "scheduler", "scaler")


def job(*extra: str):
    return compose([*JOB, *extra])


def assert_same_state(a: Path, b: Path) -> None:
    """The two runs' last.pt parts are equal (tensors bit for bit) and so is their history."""
    sa, sb = (torch.load(d / "checkpoints/last.pt", weights_only=True) for d in (a, b))
    for part in PARTS:
        flat_a, flat_b = flatten(sa[part]), flatten(sb[part])
        assert flat_a.keys() == flat_b.keys(), part
        for key, value in flat_a.items():
            same = torch.equal(value, flat_b[key]) if isinstance(value, torch.Tensor) else value == flat_b[key]
            assert same, f"{part}: {key}"
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]
    ha, hb = (json.loads((d / "metrics.json").read_text())["history"] for d in (a, b))
    assert strip(ha) == strip(hb)


def flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, sub in enumerate(value) for k, v in flatten(sub, f"{prefix}{i}.").items()}
    return {prefix: value}


@pytest.fixture
def scaled(monkeypatch):
    """An enabled grad scaler on CPU (trainer.precision=16 needs a GPU): fp32 losses scaled by powers of
    two, so the numbers stay exact while the scaler's state (scale, growth tracker) moves and is saved."""
    init = Trainer.__init__

    def with_scaler(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=3)

    monkeypatch.setattr(Trainer, "__init__", with_scaler)


def sigterm_at(monkeypatch, micro_batch: int) -> None:
    """SIGTERM, as a cluster's preemption sends it, during the run's `micro_batch`-th training micro-batch."""
    step, calls = Trainer.train_step, [0]

    def train_step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == micro_batch:
            signal.raise_signal(signal.SIGTERM)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.slow
def test_a_stop_inside_an_accumulation_window_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, scaled):
    features = ["trainer.accumulate=3", "trainer.ema_decay=0.9", "trainer.mixup_alpha=0.4", "scheduler=cosine"]
    run(job(*features), run_dir=tmp_path / "full")
    with monkeypatch.context() as m:
        sigterm_at(m, 13 + 8)  # epoch 2, inside its third window (micro-batches 7-9)
        with pytest.raises(Interrupted, match="in epoch 2 after batch 9"):
            run(job(*features), run_dir=tmp_path / "stopped")
    stopped = torch.load(tmp_path / "stopped/checkpoints/last.pt", weights_only=True)
    # the window was finished: 5 steps in epoch 1 (13 micro-batches, the last window short), 3 in epoch 2
    assert (stopped["epoch"], stopped["batch"], stopped["global_step"]) == (1, 9, 8)
    assert stopped["scaler"]["scale"] != 2.0**4  # the scaler's state moved and is in last.pt
    run(job(*features, f"trainer.resume={tmp_path / 'stopped'}"), run_dir=tmp_path / "resumed")
    assert_same_state(tmp_path / "full", tmp_path / "resumed")


@pytest.mark.slow
def test_checkpoint_every_n_steps_saves_mid_epoch_and_a_kill_loses_only_the_steps_since(tmp_path, monkeypatch):
    run(job("trainer.checkpoint_every_n_steps=4"), run_dir=tmp_path / "full")
    saves, save_last = [], Checkpoints.save_last

    def killed_after_the_second_save(self, parts, state):
        save_last(self, parts, state)
        saves.append((state.epoch, state.batch))
        if len(saves) == 2:
            raise SystemExit(-9)  # nothing after this point happens, as after a kill -9

    with monkeypatch.context() as m:
        m.setattr(Checkpoints, "save_last", killed_after_the_second_save)
        with pytest.raises(SystemExit):
            run(job("trainer.checkpoint_every_n_steps=4"), run_dir=tmp_path / "killed")
    assert saves == [(0, 4), (0, 8)]  # every 4 optimizer steps, inside the first epoch
    run(job("trainer.checkpoint_every_n_steps=4", f"trainer.resume={tmp_path / 'killed'}"),
        run_dir=tmp_path / "resumed")
    assert_same_state(tmp_path / "full", tmp_path / "resumed")


def test_checkpoint_every_n_steps_must_be_positive():
    from resexp.errors import ConfigError
    from resexp.train.trainer import check_trainer

    with pytest.raises(ConfigError, match="trainer.checkpoint_every_n_steps must be >= 1"):
        check_trainer(job("trainer.checkpoint_every_n_steps=0").trainer)
