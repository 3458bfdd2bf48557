"""The trainer's parts on their own: the training state, the monitor, the one flip TTA, the one
backbone-loading rule, the one metrics.json writer, the run's facts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from resexp.config import compose
from resexp.errors import CheckpointError
from resexp.records.epoch import EpochRecord
from resexp.records.facts import RunFacts
from resexp.run_dir import RunPaths, write_metrics
from resexp.train import evaluation, run
from resexp.train.callbacks import Callback
from resexp.train.state import Monitor, TrainingState

TINY = [
    "model=resnet20", "model.stages.depths=[1,1]", "model.stages.widths=[8,16]", "model.stages.strides=[1,2]",
    "data=synthetic", "data.num_samples=96", "data.image_size=16", "data.num_classes=4", "data.batch_size=32",
    "trainer.epochs=1", "trainer.progress=false", "trainer.report=false",
]


def row(epoch: int, acc: float, loss: float) -> EpochRecord:
    return EpochRecord(epoch=epoch, val_acc=acc, val_loss=loss, val_acc5=1.0, train_loss=1.0, train_acc=0.5)


# --- TrainingState and Monitor ----------------------------------------------------------------------
def test_training_state_round_trips_through_state_dict_and_torch_load(tmp_path):
    state = TrainingState(Monitor("val_acc", patience=3))
    state.train_acc.update(torch.tensor(0.7), torch.eye(4)[[0, 1, 2]], torch.tensor([0, 1, 3]))
    state.monitor.update(row(1, 0.6, 1.2))
    state.monitor.update(row(2, 0.5, 1.3))
    state.end_epoch(row(2, 0.5, 1.3))
    state.batch, state.global_step = 5, 42
    state.train_acc.update(torch.tensor(0.3), torch.eye(4)[[2]], torch.tensor([2]))
    torch.save(state.state_dict(), tmp_path / "state.pt")  # as last.pt holds it: weights_only readable

    again = TrainingState(Monitor("val_acc", patience=3))
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert (again.epoch, again.batch, again.global_step) == (1, 5, 42)
    assert again.history == state.history and again.monitor.best == state.monitor.best
    assert again.monitor.bad_evals == 1
    assert again.train_acc.compute() == state.train_acc.compute()
    assert set(state.state_dict()) == {"epoch", "batch", "global_step", "best", "history", "bad_evals", "train_acc"}


def test_monitor_tracks_the_best_and_stops_after_patience():
    m = Monitor("val_acc", patience=2)
    assert m.update(row(1, 0.5, 1.0)) and m.best["epoch"] == 1
    assert m.update(row(2, 0.7, 0.9)) and m.best["epoch"] == 2
    assert not m.update(row(3, 0.7, 0.8)) and not m.should_stop  # equal is not better
    assert not m.update(row(4, 0.6, 0.7)) and m.should_stop
    assert m.best == row(2, 0.7, 0.9).best() == {"epoch": 2, "val_loss": 0.9, "val_acc": 0.7, "val_acc5": 1.0,
                                                 "train_loss": 1.0, "train_acc": 0.5}

    by_loss = Monitor("val_loss", patience=None)
    by_loss.update(row(1, 0.9, 1.0))
    assert by_loss.update(row(2, 0.1, 0.5))  # a lower loss wins whatever the accuracy
    for epoch in range(3, 20):
        by_loss.update(row(epoch, 0.9, 2.0))
    assert by_loss.best["epoch"] == 2 and not by_loss.should_stop  # no patience: never stops


# --- one flip TTA -------------------------------------------------------------------------------------
class Batches(list):
    """A loader as evaluation reads one: batches of (images, labels) and set_epoch."""

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        pass


def test_one_flip_tta_serves_training_evaluation_and_inference(tmp_path, monkeypatch):
    from resexp.evaluate import evaluate_loader
    from resexp.inference import load_run

    calls: list[str] = []
    real = evaluation.flip_tta

    def spy(forward, x, flip):
        calls.append("tta" if flip else "plain")
        return real(forward, x, flip)

    monkeypatch.setattr(evaluation, "flip_tta", spy)
    run(compose([*TINY, "trainer.tta_flip=true"]), run_dir=tmp_path)  # validation + final evaluation
    assert calls and set(calls) == {"tta"}

    loaded = load_run(tmp_path)
    x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        expected = ((loaded.model(x) + loaded.model(x.flip(3))) / 2).float()
    calls.clear()
    probs = loaded.predict(x)  # inference
    evaluated = evaluation.evaluate(loaded.model, Batches([(x, y)]), loaded.device, tta_flip=True, collect=True)
    command = evaluate_loader(loaded, Batches([(x, y)]))  # python -m resexp.evaluate
    assert calls == ["tta"] * 3
    assert torch.allclose(probs, expected.softmax(1), atol=1e-6)
    assert torch.allclose(evaluated["probs"], expected.softmax(1), atol=1e-6)
    loss = nn.functional.cross_entropy(expected, y).item()
    assert math.isclose(command["loss"], loss, rel_tol=1e-5) and math.isclose(evaluated["loss"], loss, rel_tol=1e-5)


# --- one backbone-loading rule ------------------------------------------------------------------------
def test_finetune_from_and_model_pretrained_reject_the_same_file_with_the_same_message(tmp_path):
    from resexp.models import build_model

    other = compose([*TINY, "model.stages.widths=[8,32]"]).model  # layer2 is wider: tensors of other shapes
    path = tmp_path / "wider.pt"
    torch.save({"model": build_model(other, num_classes=4, in_channels=3).state_dict()}, path)

    messages = {}
    for option in ("model.pretrained", "trainer.finetune_from"):
        with pytest.raises(CheckpointError) as info:
            run(compose([*TINY, f"{option}={path}"]), run_dir=tmp_path / option)
        messages[option] = str(info.value).removeprefix(f"{option}={path}")
    assert messages["model.pretrained"] == messages["trainer.finetune_from"]
    assert "do not fit this model" in messages["model.pretrained"]
    assert "layer2.0.conv1.weight" in messages["model.pretrained"]  # the mismatched tensor, by name


# --- the run directory: facts (tests/test_records.py) and the one metrics.json writer ---------------------
def test_run_facts_are_the_checkpoints_meta():
    facts = RunFacts(name="resnet20", num_classes=3, in_channels=1, image_size=8, class_names=["a", "b"],
                     mean=None, std=None, params=10)
    assert RunFacts.from_meta(facts.to_meta()) == facts
    assert facts.labels == ["0", "1", "2"]  # names for only some classes: indices instead
    assert RunFacts.from_meta({"num_classes": 2, "in_channels": 3, "image_size": 4}).input_shape == (3, 4, 4)


def test_metrics_json_has_one_writer_for_training_and_sweep_jobs(tmp_path, monkeypatch):
    path = RunPaths(tmp_path).metrics
    write_metrics(tmp_path, {"status": "running", "best": {"val_loss": float("nan")}, "stale": 1})
    write_metrics(tmp_path, {"status": "completed", "best": {"val_acc": 0.5}})  # a fresh record: no "stale"
    assert json.loads(path.read_text()) == {"status": "completed", "best": {"val_acc": 0.5}, "last": {},
                                            "history": [], "params": None}
    write_metrics(tmp_path, {"wall_s": 1.5}, merge=True)  # what a sweep job adds to the training record
    assert json.loads(path.read_text())["best"] == {"val_acc": 0.5} and json.loads(path.read_text())["wall_s"] == 1.5

    write_metrics(tmp_path / "failed_early", {"status": "failed", "error": "x"}, merge=True)  # no record yet
    assert json.loads(RunPaths(tmp_path / "failed_early").metrics.read_text())["history"] == []

    monkeypatch.setenv("RANK", "1")  # DDP ranks > 0 write nothing
    write_metrics(tmp_path / "rank1", {"status": "running"})
    assert not Path(tmp_path / "rank1").exists()

    monkeypatch.delenv("RANK")
    write_metrics(tmp_path, {"best": {"val_loss": float("inf")}})
    assert json.loads(path.read_text())["best"] == {"val_loss": None}  # JSON has no Inf


def test_hparams_shown_are_the_keys_a_run_changed_its_command_line_and_the_essentials():
    from resexp.train.hparams import ALWAYS, shown_hparams

    defaults = {"model": {"name": "resnet20", "block": {"name": "basic"}}, "optimizer": {"name": "sgd", "lr": 0.1},
                "trainer": {"precision": "32", "epochs": 10}, "data": {"name": "digits", "batch_size": 64}, "seed": 0}
    config = {**defaults, "model": {"name": "resnet20", "block": {"name": "plain_basic"}},
              "trainer": {"precision": "bf16", "epochs": 10}}
    # a sweep's key is a column for every job, also the one whose value is the default
    shown = shown_hparams(config, defaults, ["optimizer.lr=0.1", "model/block=plain_basic", "+trainer.epochs=10",
                                             "trainer.progress=false", "data.num_workers=4", "logger=mlflow"])
    assert set(shown) == set(ALWAYS) | {"model.block.name", "trainer.precision"}
    assert shown["model.block.name"] == "plain_basic" and shown["trainer.precision"] == "bf16"
    assert "trainer.precision" not in shown_hparams(defaults, defaults)


def test_a_run_choosing_no_group_option_is_compared_with_itself_any_other_with_the_default_composition(
        monkeypatch, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.conf import ConfigSourceInfo
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from resexp.config import conf_dir
    from resexp.train import hparams

    composed = []
    monkeypatch.setattr(hparams, "compose", lambda: composed.append(1) or OmegaConf.create({"seed": 0}))
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        run_config = compose("config", return_hydra_config=True)
    run_config.hydra.runtime.output_dir = str(tmp_path / "job")
    elsewhere = run_config.copy()  # the same run with --config-dir: one more config source
    elsewhere.hydra.runtime.config_sources.append(ConfigSourceInfo("/elsewhere", "file", "command-line"))
    config, job = {"seed": 3}, tmp_path / "job"
    assert hparams.default_composition(config, [], job) == {"seed": 0} and composed  # no Hydra run: the Python API
    composed.clear()
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    HydraConfig.instance().set_config(run_config)
    assert hparams.default_composition(config, [], job) is config and not composed  # `python -m resexp` itself
    assert hparams.default_composition(config, ["seed=3", "optimizer.lr=0.1"], job) is config and not composed
    assert hparams.default_composition(config, ["model=resnet18"], job) == {"seed": 0} and composed
    composed.clear()
    assert hparams.default_composition(config, ["+experiment=fashion_mnist_best"], job) == {"seed": 0} and composed
    composed.clear()
    # a Python caller's run after that Hydra job in the same process (its HydraConfig is still set)
    assert hparams.default_composition(config, [], tmp_path / "python") == {"seed": 0} and composed
    composed.clear()
    HydraConfig.instance().set_config(elsewhere)
    assert hparams.default_composition(config, [], job) == {"seed": 0} and composed


# --- the memory layout -------------------------------------------------------------------------------
class SeenLayout(Callback):
    """The layout of every batch the model is given in training ('channels_last' or 'contiguous'), and
    whether the optimizer is fused."""

    def __init__(self):
        self.seen: set[str] = set()
        self.fused = None

    def on_fit_start(self, trainer) -> None:
        self.fused = bool(trainer.optimizer.defaults.get("fused"))

        def pre(module, args):
            x = args[0]
            if module.training and x.dim() == 4:
                self.seen.add("channels_last" if x.is_contiguous(memory_format=torch.channels_last)
                              and not x.is_contiguous() else "contiguous")
        trainer.model.register_forward_pre_hook(pre)


@pytest.mark.parametrize(("start", "resumed", "expected"), [
    ([], [], ("channels_last", True)),  # the defaults on CPU: oneDNN's faster layout, fused kernels; kept
    (["trainer.channels_last=false", "optimizer.fused=false"], [], ("contiguous", False)),  # as the run was
    (["trainer.channels_last=false", "optimizer.fused=false"],  # unless told
     ["trainer.channels_last=true", "optimizer.fused=true"], ("channels_last", True)),
])
def test_cpu_runs_train_channels_last_and_fused_by_default_and_a_resume_keeps_how_the_run_computed(
        tmp_path, start, resumed, expected):
    first, second = SeenLayout(), SeenLayout()
    run(compose([*TINY, "trainer.device=cpu", *start]), run_dir=tmp_path / "a", callbacks=[first])
    run(compose([*TINY, "trainer.device=cpu", "trainer.epochs=2", f"trainer.resume={tmp_path / 'a'}", *resumed]),
        run_dir=tmp_path / "b", callbacks=[second])
    assert (first.seen, first.fused) == (({"channels_last"}, True) if not start else ({"contiguous"}, False))
    assert (second.seen, second.fused) == ({expected[0]}, expected[1])
