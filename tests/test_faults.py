"""Faults found by using resexp as a hostile user would: each test failed before its fix."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resexp.data import DATASETS
from resexp.data.images import list_images
from resexp.errors import DataError


# ------------------------------------------------------------------------- links in image folders
def make_images(root: Path, classes=("a", "b"), per_class=8) -> Path:
    for label, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = np.full((8, 8, 3), 20 * i, dtype=np.uint8)
            a[..., label] = 255
            Image.fromarray(a).save(root / c / f"{i}.png")
    return root


def test_a_link_loop_in_a_class_folder_is_skipped_with_a_warning(tmp_path, caplog):
    root = make_images(tmp_path / "imgs")
    os.symlink("..", root / "a" / "loop")  # a/loop -> the root: b's images again, under a
    with caplog.at_level(logging.WARNING, logger="resexp.data"):
        names, files = list_images(root, "image_folder")
    assert names == ["a", "b"]
    assert len(files) == 16
    assert all(label == (0 if path.startswith("a/") else 1) for path, label in files)
    assert any("skipping linked folder" in r.message and str(root / "a" / "loop") in r.message
               for r in caplog.records), caplog.text


def test_the_loop_does_not_reach_the_split(tmp_path):
    root = make_images(tmp_path / "imgs")
    os.symlink("..", root / "a" / "loop")
    cfg = {"name": "image_folder", "root": str(root), "val_split": 0.25, "image_size": 8}
    from resexp.config import typed

    split = DATASETS.get("image_folder").load(typed("data", cfg), seed=0).split
    assert len(split["train"]) + len(split["val"]) == 16
    assert not [p for p in split["train"] + split["val"] if "loop" in p]


def test_a_folder_or_file_reached_twice_through_links_is_counted_once(tmp_path):
    root = make_images(tmp_path / "imgs")
    outside = make_images(tmp_path / "outside", classes=("x",), per_class=3) / "x"
    os.symlink(outside, root / "a" / "extra1")
    os.symlink(outside, root / "a" / "extra2")  # the same real folder again
    os.symlink(root / "b" / "0.png", root / "b" / "copy.png")  # one file, two names
    names, files = list_images(root, "image_folder")
    assert sum(label == 0 for _, label in files) == 8 + 3
    assert sum(label == 1 for _, label in files) == 8


def test_a_class_folder_linked_to_another_is_an_error_naming_both(tmp_path):
    root = make_images(tmp_path / "imgs")
    os.symlink(root / "a", root / "c")
    with pytest.raises(DataError) as e:
        list_images(root, "image_folder")
    assert str(root / "c") in str(e.value) and str(root / "a") in str(e.value)


def test_a_class_without_validation_images_is_named_in_a_warning(tmp_path, caplog):
    root = make_images(tmp_path / "imgs", per_class=8)
    for i in range(1, 8):
        (root / "b" / f"{i}.png").unlink()  # one image: it stays in training
    from resexp.config import typed

    cfg = typed("data", {"name": "image_folder", "root": str(root), "val_split": 0.25, "image_size": 8})
    with caplog.at_level(logging.WARNING, logger="resexp.data"):
        DATASETS.get("image_folder").load(cfg, seed=0)
    assert any("no validation image" in r.message and "b" in r.message.split("under")[0]
               for r in caplog.records), caplog.text


# ----------------------------------------------------------------------------- run directory reuse
BASE = ["model=resnet20", "trainer.epochs=1", "trainer.device=cpu", "trainer.report=false",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.progress=false"]


def test_a_second_run_into_a_used_run_directory_is_refused_before_writing(tmp_path, in_process, capsys):
    d = tmp_path / "run"
    # a launch that fails before training leaves only Hydra's .hydra/ and log file: not an earlier run
    assert in_process(tmp_path, *BASE, "data=image_folder", "data.root=/nonexistent", f"hydra.run.dir={d}") == 2
    assert in_process(tmp_path, *BASE, f"hydra.run.dir={d}") == 0
    before = {p: p.read_bytes() for p in (d / "metrics.json", d / "checkpoints" / "best.pt",
                                          d / ".hydra" / "config.yaml")}
    events = sorted((d / "tb").iterdir())
    capsys.readouterr()

    assert in_process(tmp_path, *BASE, "model=resnet32", f"hydra.run.dir={d}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(d) in err[0] and f"trainer.resume={d}" in err[0] and "hydra.run.dir" in err[0], err
    assert {p: p.read_bytes() for p in before} == before  # the earlier run's records, Hydra's included
    assert sorted((d / "tb").iterdir()) == events

    assert in_process(tmp_path, *BASE, "trainer.epochs=2", f"trainer.resume={d}", f"hydra.run.dir={d}") == 0
    import json

    assert json.loads((d / "metrics.json").read_text())["last"]["epoch"] == 2


def test_a_sweep_rerun_into_its_directory_leaves_the_earlier_jobs_as_they_were(tmp_path, in_process, capsys):
    sweep = tmp_path / "sweep"
    args = ["-m", *BASE, "trainer.report=false", "seed=0", f"hydra.sweep.dir={sweep}"]
    assert in_process(tmp_path, *args) == 0
    before = (sweep / "0" / "metrics.json").read_text()
    capsys.readouterr()
    assert in_process(tmp_path, *args) == 1
    err = capsys.readouterr().err
    assert "1 sweep job(s) were not run: #0: run directory" in err, err
    assert (sweep / "0" / "metrics.json").read_text() == before
    assert not (sweep / "0" / "error.log").exists()


def test_the_python_api_refuses_a_used_run_directory_too(tmp_path):
    from resexp.config import compose
    from resexp.errors import RunDirError
    from resexp.train import run

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"earlier")
    with pytest.raises(RunDirError, match="already holds a run"):
        run(compose(BASE), run_dir=tmp_path)
    assert (tmp_path / "checkpoints" / "best.pt").read_bytes() == b"earlier"
    assert not (tmp_path / "data_split.json").exists() and not (tmp_path / "tb").exists()


# ------------------------------------------------------------------- temporaries left by kill -9
def test_temporary_checkpoints_left_by_a_kill_are_removed_when_the_run_resumes(tmp_path):
    from resexp.config import compose
    from resexp.train import run

    a, b = tmp_path / "a", tmp_path / "b"
    run(compose(BASE), run_dir=a)
    old, fresh = a / "checkpoints" / ".last.pt.k1ll3d_x.tmp", a / "checkpoints" / ".last.pt.w0rk1ng_.tmp"
    others = [a / "checkpoints" / name
              for name in (".notes.tmp", "last.pt.tmp", ".last.pt.tmp", ".other.pt.abcdefgh.tmp")]
    for p in (old, fresh, *others):
        p.write_bytes(b"x" * 1000)
    os.utime(old, (1, 1))  # killed long ago; `fresh` may be a save of a run still going
    run(compose([*BASE, "trainer.epochs=2", f"trainer.resume={a}"]), run_dir=b)
    assert not old.exists() and fresh.exists() and all(p.exists() for p in others)

    orphan = b / "checkpoints" / ".best.pt.a1b2c3d4.tmp"  # the run continued in its own directory
    orphan.write_bytes(b"x" * 1000)
    run(compose([*BASE, "trainer.epochs=3", "trainer.resume=auto"]), run_dir=b)
    assert not orphan.exists()
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


# ------------------------------------------------------------------ values and files: one line each
@pytest.mark.parametrize("args, expected", [
    (["optimizer.lr=-1"], "optimizer.lr=-1.0 must be >= 0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1.0 must be >= 0"),
    (["trainer.label_smoothing=2"], "trainer.label_smoothing=2.0 must be in [0, 1)"),
    (["trainer.grad_clip=-1"], "trainer.grad_clip=-1.0 must be > 0"),
    (["model=resnet50", "data.image_size=3"], "data.image_size=3 is too small for model=resnet50: its imagenet "
                                              "stem shrinks the map 4x (32x in all), so it needs data.image_size >= 8"),
])
def test_out_of_range_values_are_one_line_before_any_data_is_read(tmp_path, in_process, capsys, args, expected):
    # data.root does not exist: the value must be caught before the data set is looked at
    code = in_process(tmp_path, *BASE, "data=image_folder", "data.root=/nonexistent", *args,
                      f"hydra.run.dir={tmp_path / 'run'}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {err[0].removeprefix('error: ')}"] and expected in err[0], err


def _one_line_error(main, argv, monkeypatch, capsys) -> str:
    """`python -m <command> argv` in-process through the shared wrapper: its single stderr line."""
    from resexp.cli import run_command

    monkeypatch.setattr("sys.argv", ["resexp", *argv])
    with pytest.raises(SystemExit) as e:
        run_command(main)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1, lines
    return lines[0]


def test_files_that_are_not_checkpoints_are_one_line_naming_file_and_fault(tmp_path, monkeypatch, capsys):
    import torch

    from resexp import evaluate, predict

    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    five = tmp_path / "five" / "checkpoints" / "best.pt"
    five.parent.mkdir(parents=True)
    torch.save(5, five)
    for main, extra in ((evaluate.main, []), (predict.main, [f"input={image}"])):
        line = _one_line_error(main, [f"run={five}", *extra], monkeypatch, capsys)
        assert f"{five} is not a resexp checkpoint (missing: model, meta" in line, line
    partial = tmp_path / "partial.pt"
    torch.save({"model": {}, "meta": {"name": "resnet20"}}, partial)
    line = _one_line_error(evaluate.main, [f"run={partial}"], monkeypatch, capsys)
    assert "missing: meta.num_classes, meta.in_channels, meta.image_size" in line, line

    code = tmp_path / "code.pt"
    torch.save({"model": {}, "meta": {}, "hook": print}, code)
    line = _one_line_error(evaluate.main, [f"run={code}"], monkeypatch, capsys)
    assert f"{code} holds code or objects resexp will not load (print)" in line and "weights_only" not in line


def test_unreadable_last_pt_and_empty_pretrained_file_are_one_line(tmp_path):
    from resexp.config import compose
    from resexp.errors import CheckpointError
    from resexp.models.pretrained import read_state_dict
    from resexp.train import run

    last = tmp_path / "old" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError) as e:
        run(compose([*BASE, f"trainer.resume={tmp_path / 'old'}"]), run_dir=tmp_path / "new")
    assert str(e.value).startswith(f"{last} is not a checkpoint file (unreadable: ") and "\n" not in str(e.value)

    empty = tmp_path / "w.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"^model.pretrained: .*w.pt: empty file \(0 bytes"):
        read_state_dict(empty)


def test_a_class_folder_linked_inside_another_is_an_error_naming_both(tmp_path):
    root = make_images(tmp_path / "imgs")
    (root / "a" / "sub").mkdir()
    (root / "a" / "0.png").rename(root / "a" / "sub" / "0.png")
    os.symlink(root / "a" / "sub", root / "c")
    with pytest.raises(DataError, match=f"class folder {root / 'c'} is a folder inside class folder {root / 'a'} "):
        list_images(root, "image_folder")
