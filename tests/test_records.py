"""One record per concept (resexp/records/): the run's facts, written with a format version and read in
every layout a resexp wrote (checkpoints' meta, model.json), and the epoch row whose JSON keys users'
scripts read (DESIGN.md: metrics.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from resexp import evaluate
from resexp.errors import CheckpointError
from resexp.inference import load_run
from resexp.records import FORMAT_VERSION, EpochRecord, RunFacts

OLD = Path(__file__).resolve().parent / "fixtures" / "run_2026_12_04"  # written before format_version
FACTS = RunFacts(name="resnet20", num_classes=3, in_channels=1, image_size=8, class_names=["a", "b", "c"],
                 mean=[0.5], std=[0.25], params=10)
ROW_KEYS = ["epoch", "train_loss", "train_acc", "train_acc5", "val_loss", "val_acc", "val_acc5", "lr", "seconds",
            "images_per_s"]


def test_facts_are_written_with_their_format_version_and_read_back():
    meta = FACTS.to_meta()
    assert meta["format_version"] == FORMAT_VERSION
    assert RunFacts.from_meta(meta) == FACTS
    card = FACTS.card({"model": {"name": "resnet20", "arch": "cifar"}, "data": {"name": "synthetic"}, "seed": 0},
                      {"epoch": 1, "val_acc": 0.5}, weights="best.safetensors")
    assert card["format_version"] == FORMAT_VERSION and card["normalisation"] == {"mean": [0.5], "std": [0.25]}
    assert RunFacts.from_card(card) == FACTS  # mean/std from `normalisation`, as model.json keeps them
    assert FACTS.labels == ["a", "b", "c"] and FACTS.input_shape == (1, 8, 8)
    assert RunFacts(**{**FACTS.__dict__, "class_names": ["a"]}).labels == ["0", "1", "2"]


def test_the_old_layout_is_read_as_it_was_written():
    old_meta = torch.load(OLD / "killed/checkpoints/best.pt", weights_only=True)["meta"]
    assert "format_version" not in old_meta  # the fixture is the layout before versions
    facts = RunFacts.from_meta(old_meta)
    assert (facts.name, facts.num_classes, facts.image_size, facts.mean, facts.params) == \
        ("resnet20", 4, 8, [0.5, 0.5, 0.5], 74900)
    assert facts.to_meta() == {"format_version": FORMAT_VERSION, **old_meta}
    # a hand-made meta with only what rebuilds the network: the rest reads as None
    assert RunFacts.from_meta({"num_classes": 2, "in_channels": 3, "image_size": 4}).input_shape == (3, 4, 4)
    # a model.json without format_version (the older card) reads too
    card = FACTS.card({}, {}, weights="w")
    del card["format_version"]
    assert RunFacts.from_card(card) == FACTS


def test_a_newer_format_version_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    with pytest.raises(CheckpointError, match="format_version 99 is newer than this resexp reads"):
        RunFacts.from_meta({**FACTS.to_meta(), "format_version": 99}, "x.pt")
    run_dir = Path(shutil.copytree(OLD / "killed", tmp_path / "run"))
    best = run_dir / "checkpoints/best.pt"
    state = torch.load(best, weights_only=True)
    state["meta"]["format_version"] = FORMAT_VERSION + 1
    torch.save(state, best)
    with pytest.raises(CheckpointError) as info:
        load_run(run_dir)
    assert str(info.value) == (f"{best}: run facts format_version {FORMAT_VERSION + 1} is newer than this resexp "
                               f"reads (up to {FORMAT_VERSION}); upgrade resexp to read it")
    from resexp.cli import run_command

    monkeypatch.setattr("sys.argv", ["resexp", f"run={run_dir}"])
    with pytest.raises(SystemExit) as e:
        run_command(evaluate.main)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and lines == [f"error: evaluate: {info.value}"], lines


def test_an_epoch_record_writes_the_history_keys_users_read():
    rows = json.loads((OLD / "straight_metrics.json").read_text())["history"]
    assert list(rows[0]) == ROW_KEYS  # the fixture is the contract
    for row in rows:
        record = EpochRecord.from_dict(row)
        assert record.to_dict() == row and list(record.to_dict()) == ROW_KEYS
    kept = EpochRecord.from_dict({**rows[0], "grad_norm": 1.5})  # a key from elsewhere survives a round trip
    assert kept.to_dict()["grad_norm"] == 1.5
    unvalidated = EpochRecord(epoch=2, train_loss=0.5, train_acc=0.25, lr=0.1, seconds=1.0, images_per_s=10.0)
    assert not unvalidated.validated and "val/acc" not in unvalidated.scalars()
    assert unvalidated.scalars() == {"train/loss": 0.5, "train/acc": 0.25, "train/lr": 0.1, "train/throughput": 10.0}
    assert EpochRecord.from_dict(rows[0]).best() == {k: rows[0][k] for k in
                                                     ("epoch", "val_loss", "val_acc", "val_acc5", "train_loss",
                                                      "train_acc")}
