"""`python -m resexp.predict` and `python -m resexp.evaluate` on a tiny finished run."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resexp import evaluate, predict
from resexp.config import compose
from resexp.errors import CheckpointError, ConfigError, DataError
from resexp.inference import load_image, load_run
from resexp.train import run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data=synthetic", "data.num_samples=128", "data.image_size=16", "data.num_classes=3",
        "model.stages.depths=[1,1,1]", "trainer.epochs=2", "trainer.progress=false"]
NAMES = ["class_0", "class_1", "class_2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run")
    run(compose(TINY), run_dir=path)
    return path


@pytest.fixture(scope="module")
def val_png(run_dir, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """The first validation image written as a PNG, and the probabilities the run's model gives it
    straight from the validation loader."""
    from resexp.data import build_data

    loaded = load_run(run_dir)
    data = build_data(loaded.data_cfg, seed=loaded.config["seed"])
    x, _ = next(iter(data.val))
    mean, std = torch.tensor(loaded.facts.mean).view(3, 1, 1), torch.tensor(loaded.facts.std).view(3, 1, 1)
    pixels = (x[0] * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)
    path = tmp_path_factory.mktemp("images") / "val0.png"
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)
    return path, loaded.predict(x[:1])[0]


def parse_topk(text: str) -> list[tuple[str, float]]:
    return [(m[1], float(m[2]) / 100) for m in re.finditer(r"^\s+\d+\. (\S+)\s+([\d.]+)%$", text, re.M)]


def write_png(path: Path, size=(20, 24), mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path, format="PNG")
    return path


# ------------------------------------------------------------------------------------------ predict
def test_predict_one_image_prints_topk_with_class_names(run_dir, val_png, capsys):
    path, expected = val_png
    assert predict.main([f"run={run_dir}", f"input={path}", "topk=2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(path)
    top = parse_topk(out)
    assert len(top) == 2 and all(name in NAMES for name, _ in top)
    assert top[0][1] >= top[1][1] and sum(p for _, p in top) <= 1 + 1e-4
    # the run's own preprocessing: the PNG gives what the validation loader's tensor gives
    want = expected.topk(2)
    assert [n for n, _ in top] == [NAMES[i] for i in want.indices.tolist()]
    assert [p for _, p in top] == pytest.approx(want.values.tolist(), abs=1e-4)


def test_predict_folder_writes_csv_skips_other_files_and_reports_bad_images(run_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_png(folder / "a.png")
    write_png(folder / "sub" / "b.jpg", (40, 30), "L")  # grey and another size: converted and resized
    (folder / "README.txt").write_text("not an image")
    (folder / "broken.jpg").write_text("a text file named .jpg")
    out_csv = tmp_path / "out" / "pred.csv"
    assert predict.main([f"run={run_dir}", f"input={folder}", f"csv={out_csv}"]) == 1  # one failed
    captured = capsys.readouterr()
    assert "README" not in captured.out + captured.err  # other extensions: skipped silently
    assert "broken.jpg" in captured.err and "broken.jpg" not in captured.out
    assert len(parse_topk(captured.out)) == 2 * 3  # topk=5 clipped to the 3 classes, for 2 images
    rows = list(csv.DictReader(out_csv.open()))
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.jpg"]
    for r in rows:
        assert r["top1"] in NAMES
        assert sum(float(r[f"top{k}_prob"]) for k in (1, 2, 3)) == pytest.approx(1.0, abs=1e-4)
    (folder / "broken.jpg").unlink()
    assert predict.main([f"run={run_dir}", f"input={folder}"]) == 0


def test_predict_errors_name_the_problem(run_dir, tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello")
    with pytest.raises(DataError, match="fake.jpg"):
        predict.main([f"run={run_dir}", f"input={fake}"])
    with pytest.raises(DataError, match=r"notes.txt is not an image file"):
        predict.main([f"run={run_dir}", f"input={write_png(tmp_path / 'notes.txt')}"])
    with pytest.raises(DataError, match="input not found"):
        predict.main([f"run={run_dir}", f"input={tmp_path / 'missing.png'}"])
    with pytest.raises(ConfigError, match=r"unknown key 'top'; valid keys: run, input, topk"):
        predict.main([f"run={run_dir}", f"input={fake}", "top=3"])
    with pytest.raises(ConfigError, match="missing input="):
        predict.main([f"run={run_dir}"])
    with pytest.raises(ConfigError, match="topk=0"):
        predict.main([f"run={run_dir}", f"input={fake}", "topk=0"])
    png = write_png(tmp_path / "x.png")
    with pytest.raises(CheckpointError, match="run directory not found"):
        predict.main([f"run={tmp_path / 'nope'}", f"input={png}"])
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        predict.main([f"run={tmp_path}", f"input={png}"])


@pytest.mark.slow
def test_command_line_errors_are_one_line_with_exit_status_2(run_dir, tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-m", "resexp.predict", f"run={run_dir}", f"input={fake}"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "fake.jpg" in proc.stderr


def test_image_folder_runs_predict_without_their_training_photos(tmp_path):
    """Predicting reads only the run's config: the training photos (data.root) need not be here."""
    from resexp.inference import data_config

    root = tmp_path / "photos"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        write_png(root / name / "1.png", (50, 40))
    cfg = {"data": {"name": "image_folder", "root": str(root), "image_size": 24,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    img = write_png(tmp_path / "query.png", (64, 48))
    want = load_image(img, data_config(cfg), (3, 24, 24))
    cfg["data"]["root"] = str(tmp_path / "elsewhere")
    assert torch.equal(load_image(img, data_config(cfg), (3, 24, 24)), want)


# ----------------------------------------------------------------------------------------- evaluate
def test_evaluate_reproduces_the_best_val_accuracy(run_dir, tmp_path, capsys):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out_json = tmp_path / "eval.json"
    assert evaluate.main([f"run={run_dir}", f"json={out_json}", "device=cpu"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert result["split"] == "val" and result["count"] == 26
    assert result["acc"] == pytest.approx(metrics["best"]["val_acc"], abs=1e-9)
    assert result["loss"] == pytest.approx(metrics["best"]["val_loss"], abs=1e-5)
    assert f"top-1 {metrics['best']['val_acc']:.2%}" in out
    # a data override (batch size) changes nothing but the batching
    assert evaluate.main([f"run={run_dir}", "data.batch_size=5", f"json={out_json}"]) == 0
    assert json.loads(out_json.read_text())["acc"] == pytest.approx(metrics["best"]["val_acc"], abs=1e-9)


def test_evaluate_errors(run_dir):
    with pytest.raises(DataError, match="no test split"):
        evaluate.main([f"run={run_dir}", "split=test"])
    with pytest.raises(ConfigError, match="split=train must be val or test"):
        evaluate.main([f"run={run_dir}", "split=train"])
    # a data override is checked as a run's own data config is: the key named, with the set's keys
    with pytest.raises(ConfigError, match=r"^data.batchsize is not a key of data name=synthetic \(its keys: .*batch"):
        evaluate.main([f"run={run_dir}", "data.batchsize=5"])
    with pytest.raises(ConfigError, match="^data.batch_size=0 must be a positive integer$"):
        evaluate.main([f"run={run_dir}", "data.batch_size=0"])
    with pytest.raises(ConfigError, match="unknown key 'model.name'"):
        evaluate.main([f"run={run_dir}", "model.name=x"])
