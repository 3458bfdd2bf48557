"""A run directory written by an earlier resexp (tests/fixtures/run_2026_12_04, see its README) still
works: it resumes to the same weights, optimizer, EMA, scaler and history, bit for bit, as the old code's
own uninterrupted run, and its best.pt evaluates, predicts and exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_resume import assert_equal  # noqa: E402 - tests/ is on sys.path (pytest rootdir)

from resexp import evaluate, export, predict
from resexp.config import compose
from resexp.train import run

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_2026_12_04"
JOB = ["data=synthetic", "data.num_samples=64", "data.image_size=8", "data.num_classes=4", "data.batch_size=4",
       "model.stages.depths=[1,1,1]", "scheduler=cosine", "trainer.epochs=3", "trainer.accumulate=3",
       "trainer.ema_decay=0.9", "trainer.precision=16", "trainer.mixup_alpha=0.4",
       "trainer.checkpoint_every_n_steps=3", "trainer.progress=false", "trainer.report=false", "trainer.device=cpu"]
TIMINGS = ("seconds", "images_per_s")


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A copy: resuming, exporting and predicting must not need to write into the kept fixture."""
    return Path(shutil.copytree(FIXTURE / "killed", tmp_path / "old"))


def test_an_old_mid_epoch_last_pt_resumes_bit_for_bit_as_the_old_code_ran_on(old_run, tmp_path):
    saved = torch.load(old_run / "checkpoints/last.pt", weights_only=True)
    assert (saved["epoch"], saved["batch"], saved["global_step"]) == (1, 3, 6)  # the fixture is what it says
    run(compose([*JOB, f"trainer.resume={old_run}"]), run_dir=tmp_path / "resumed")
    new = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    want = torch.load(FIXTURE / "straight_last.pt", weights_only=True)
    for entry in ("model", "ema", "optimizer", "scheduler", "scaler", "rng", "epoch", "batch", "global_step",
                  "best", "bad_evals", "train_acc"):
        assert_equal(new[entry], want[entry], entry)
    rows = lambda path: [{k: v for k, v in r.items() if k not in TIMINGS}  # noqa: E731
                         for r in json.loads(path.read_text())["history"]]
    assert rows(tmp_path / "resumed/metrics.json") == rows(FIXTURE / "straight_metrics.json")


def test_an_old_best_pt_evaluates_to_its_recorded_val_accuracy(old_run, tmp_path):
    best = json.loads((old_run / "metrics.json").read_text())["best"]
    assert evaluate.main([f"run={old_run}", f"json={tmp_path / 'eval.json'}", "device=cpu"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["acc"] == pytest.approx(best["val_acc"], abs=1e-9)
    assert result["loss"] == pytest.approx(best["val_loss"], abs=1e-4)


@pytest.mark.slow
def test_an_old_run_predicts_and_exports(old_run, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (120, 30, 200)).save(image)
    assert predict.main([f"run={old_run}", f"input={image}", "topk=2"]) == 0
    assert capsys.readouterr().out.count("%") >= 2  # two classes with their probabilities
    assert export.main([f"run={old_run}", "format=onnx"]) == 0
    assert (old_run / "best.onnx").stat().st_size > 10_000
