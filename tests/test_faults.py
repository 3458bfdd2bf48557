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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_sweep_rerun_into_its_directory_leaves_the_earlier_jobs_as_they_were(tmp_path, in_process, capsys):
    sweep = tmp_path / "sweep"
    args = ["-m", *BASE, "trainer.report=false", f"hydra.sweep.dir={sweep}"]
    assert in_process(tmp_path, *args, "seed=0") == 0
    before = (sweep / "0" / "metrics.json").read_text()
    capsys.readouterr()
    # the same sweep again continues it: its completed job is kept, not trained again
    assert in_process(tmp_path, *args, "seed=0") == 0
    out = capsys.readouterr()
    assert "job #0 completed in an earlier run of this sweep: kept" in out.out + out.err
    assert (sweep / "0" / "metrics.json").read_text() == before
    # another sweep into the same directory is refused, job by job, naming the way out
    assert in_process(tmp_path, *args, "seed=1") == 1
    err = capsys.readouterr().err
    assert "1 sweep job(s) were not run: #0: run directory" in err, err
    assert "choose a new directory (hydra.sweep.dir=...)" in err and "hydra.run.dir" not in err, err
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
@pytest.mark.slow
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


# ---------------------------------------------------------------------- a full disk, a read-only directory
# 8x8 grey images of 10 classes: the shape of the digits, so that data=digits fits its weights too
SMALL = ["model=resnet20", "model.stages.depths=[1,1,1]", "data=synthetic", "data.num_samples=64",
         "data.image_size=8", "data.channels=1", "data.num_classes=10", "data.batch_size=16", "trainer.device=cpu",
         "trainer.report=false", "trainer.progress=false", "trainer.epochs=1"]


def metrics(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "metrics.json").read_text())


def files_in(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and "tb" not in p.parts)


def test_a_full_disk_is_one_line_and_metrics_json_agrees_with_the_files_left(tmp_path, monkeypatch):
    import errno

    import torch

    from resexp.config import compose
    from resexp.errors import DiskFullError
    from resexp.train import run

    saves = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # the second best.pt (no optimizer): the disk fills up half way
        if "optimizer" not in obj:
            saves.append(obj["best"]["epoch"])
            if len(saves) == 2:
                f.write(b"x" * 1000)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(DiskFullError) as e:
        run(compose([*SMALL, "trainer.epochs=4", "optimizer.lr=0.02"]), run_dir=tmp_path)
    first, failed = saves
    path = tmp_path / "checkpoints" / "best.pt"
    assert str(e.value).startswith("no space left on /") and "\n" not in str(e.value)
    assert f"while writing {path} (" in str(e.value)
    assert str(e.value).endswith(f"; the previous best.pt (epoch {first}) is intact"), e.value
    record = metrics(tmp_path)
    assert record["status"] == "failed" and record["error"] == f"DiskFullError: {e.value}"
    assert torch.load(path, weights_only=True)["best"]["epoch"] == record["best"]["epoch"] == first
    assert not [f for f in files_in(tmp_path) if f.endswith(".tmp")], files_in(tmp_path)


def test_a_full_disk_on_the_command_line_is_one_line_exit_2(tmp_path, in_process, capsys, monkeypatch):
    import errno

    import torch

    def no_space(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    d = tmp_path / "run"
    assert in_process(tmp_path, *SMALL, f"hydra.run.dir={d}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left on /"), err
    assert f"while writing {d / 'checkpoints' / 'best.pt'} (" in err[0], err
    assert err[0].endswith(" free); there was no earlier best.pt"), err
    assert metrics(d)["status"] == "failed" and metrics(d)["best"] == {}


@pytest.fixture
def immutable():
    """`chattr +i` (root writes past chmod, not past this), undone after the test; skips where unsupported."""
    import subprocess

    marked = []

    def mark(folder: Path) -> Path:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported here")
        marked.append(folder)
        return folder

    try:
        yield mark
    finally:
        for folder in marked:
            subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_run_directory_or_checkpoints_folder_stops_at_start_up(tmp_path, in_process, capsys, immutable):
    from resexp.config import compose
    from resexp.errors import RunDirError
    from resexp.train import run

    d = tmp_path / "ro"
    d.mkdir()
    immutable(d)
    code = in_process(tmp_path, *SMALL, f"hydra.run.dir={d}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: cannot write into {d}: Operation not permitted; make it writable or "
                                 "choose another directory (hydra.run.dir=...)"], err
    with pytest.raises(RunDirError, match=f"^cannot write into {d}: "):
        run(compose(SMALL), run_dir=d / "new" / "run")  # the folder that refuses is named

    a = tmp_path / "a"
    run(compose(SMALL), run_dir=a)
    immutable(a / "checkpoints")
    before = metrics(a)
    with pytest.raises(RunDirError, match=f"^cannot write into {a / 'checkpoints'}: "):
        run(compose([*SMALL, "trainer.epochs=2", f"trainer.resume={a}"]), run_dir=a)
    assert metrics(a) == before


# --------------------------------------------------------------- resume: every difference is named
@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    from resexp.config import compose
    from resexp.train import run

    d = tmp_path_factory.mktemp("one_epoch")
    run(compose(SMALL), run_dir=d)
    return d


@pytest.mark.parametrize("change, was, now", [
    (["model/block=plain_basic"], "model.block.name=basic_pad", "plain_basic"),
    (["data=digits"], "data.name=synthetic, data.mean=[0.5], data.std=[0.25]",
     "digits, [0.3055], [0.376]"),  # the same shape, other images
    (["optimizer=adam"], "optimizer.name=sgd, optimizer.lr=0.1, optimizer.weight_decay=0.0005", "adam, 0.001, 0.0"),
    (["seed=1", "scheduler=onecycle"], "scheduler.name=cosine, seed=0", "onecycle, 1"),
])
def test_a_resume_that_changes_the_run_names_each_difference(one_epoch, tmp_path, change, was, now):
    from resexp.config import compose
    from resexp.errors import CheckpointError
    from resexp.train import run

    base = [a for a in SMALL if not (a.startswith("data.num_samples") and "data=digits" in change)]
    with pytest.raises(CheckpointError) as e:
        run(compose([*base, "trainer.epochs=2", *change, f"trainer.resume={one_epoch}"]), run_dir=tmp_path)
    line = str(e.value)
    assert line.startswith(f"trainer.resume={one_epoch}: the run was {was}; now {now}. ") and "\n" not in line, line


def test_a_resume_may_change_only_what_leaves_the_numbers_alone_and_auto_finds_by_the_same_rule(one_epoch, tmp_path):
    import yaml

    from resexp.config import compose, to_plain
    from resexp.train import checkpoint, run

    same = ["trainer.epochs=2", "trainer.early_stopping_patience=3", "trainer.log_every_n_steps=1",
            "trainer.deterministic=true", "data.num_workers=0", "data.eval_batch_size=8"]
    run(compose([*SMALL, *same, f"trainer.resume={one_epoch}"]), run_dir=tmp_path / "resumed")
    assert metrics(tmp_path / "resumed")["last"]["epoch"] == 2

    outputs = tmp_path / "outputs"
    (outputs / "old" / "checkpoints").mkdir(parents=True)
    (outputs / "old" / "checkpoints" / "last.pt").touch()
    (outputs / "old" / ".hydra").mkdir()
    old = to_plain(compose(SMALL))
    del old["trainer"]["tta_flip"]  # a key added since that run: not a difference
    (outputs / "old" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(old))
    for trackers in ([], ["logger=mlflow"]):  # the trackers, too, leave the numbers alone
        assert checkpoint.find_auto(to_plain(compose([*SMALL, *same, *trackers])), outputs) == \
            outputs / "old/checkpoints/last.pt"
    assert checkpoint.find_auto(to_plain(compose([*SMALL, "model/block=plain_basic"])), outputs) is None


# ------------------------------------------------------------------------------------------ signals
@pytest.fixture
def no_default_sigterm():
    """SIGTERM's default handler would end the test process: one that no resexp handler catches raises here."""
    import signal

    def reached(signum, frame):
        raise RuntimeError("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, reached)
    yield
    signal.signal(signal.SIGTERM, previous)


def signal_in_epoch_2(monkeypatch, *signums: int) -> None:
    """Deliver `signums` once, at the end of the first training step of epoch 2."""
    import signal

    from resexp.train.trainer import Trainer

    real, sent = Trainer.train_step, []

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.state.epoch == 1 and not sent:
            sent.append(True)
            for s in signums:
                signal.raise_signal(s)
        return out

    monkeypatch.setattr(Trainer, "train_step", step)


@pytest.mark.parametrize("sweep, signums, expected", [
    (False, ["SIGTERM"], "stopped by SIGTERM in epoch 2 after batch 1; last.pt saved. Resume with: python -m resexp "
                         "<same overrides> trainer.resume={d}"),
    (True, ["SIGTERM"], "stopped by SIGTERM in epoch 2 after batch 1; last.pt saved. Resume with: python -m resexp "
                        "<same overrides> trainer.resume={d}"),
    (False, ["SIGINT", "SIGINT"], "stopped at once by a second SIGINT; last.pt is from after epoch 1. Resume with: "
                                  "python -m resexp <same overrides> trainer.resume={d}"),
])
def test_a_signal_in_training_is_one_line_exit_130_and_recorded_interrupted(
        tmp_path, in_process, capsys, monkeypatch, no_default_sigterm, sweep, signums, expected):
    import signal

    signal_in_epoch_2(monkeypatch, *(getattr(signal, s) for s in signums))
    where = ["-m", f"hydra.sweep.dir={tmp_path / 'sweep'}"] if sweep else [f"hydra.run.dir={tmp_path / 'run'}"]
    d = tmp_path / "sweep" / "0" if sweep else tmp_path / "run"
    assert in_process(tmp_path, *where[:-1], *SMALL, "trainer.epochs=2", where[-1]) == 130
    line = expected.format(d=d)
    err = capsys.readouterr().err.strip().splitlines()
    assert (err == [f"error: {line}"]) if not sweep else "Traceback" not in "".join(err), err
    record = metrics(d)
    assert record["status"] == "interrupted" and record["error"] == f"Interrupted: {line}", record
    assert record["best"]["epoch"] == 1 and [r["epoch"] for r in record["history"]] == [1]


@pytest.mark.parametrize("during, missing", [
    ("final_evaluation", "best.pt's re-evaluation and the run report"),
    ("write_run_report", "the run report"),
])
def test_a_sigterm_after_training_is_one_line_and_says_what_is_missing(
        tmp_path, in_process, capsys, monkeypatch, no_default_sigterm, during, missing):
    import importlib
    import signal

    module = importlib.import_module({"final_evaluation": "resexp.train.evaluation",
                                      "write_run_report": "resexp.reports.run_report"}[during])
    real = getattr(module, during)

    def step(*args, **kwargs):  # the step starts: the job's time is up
        signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, during, step)
    d = tmp_path / "run"
    assert in_process(tmp_path, *SMALL, "trainer.report=true", f"hydra.run.dir={d}") == 130
    stage = missing.split(" and ")[0]
    line = (f"stopped by SIGTERM after training, during {stage}: training is complete (last.pt after epoch 1, "
            f"best.pt epoch 1); not complete: {missing}. To write it: python -m resexp <same overrides> "
            f"trainer.resume={d}")
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {line}"]
    record = metrics(d)
    assert record["status"] == "interrupted" and record["error"] == f"Interrupted: {line}"
    assert not (d / "model.json").exists()
