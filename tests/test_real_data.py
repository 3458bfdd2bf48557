"""The real MNIST and Fashion-MNIST files (gzip IDX as distributed), end to end.

Skipped, with the reason, where the files are absent (see conftest.real_data_root).
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resexp import evaluate, predict
from resexp.config import compose
from resexp.data import build_data
from resexp.data.memory import MemoryLoader
from resexp.errors import DataError
from resexp.train import run

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def data_over(root: Path, name: str = "mnist") -> list[str]:
    return [f"data={name}", f"data.root={root}", "data.download=false"]


@pytest.fixture(scope="module")
def lenet_run(real_data_root, tmp_path_factory) -> Path:
    """The R6 tuned LeNet-5 recipe for 1 epoch on the real MNIST (98.4% test, seed 0)."""
    path = tmp_path_factory.mktemp("mnist_lenet")
    run(compose(["experiment=r6_mnist_lenet5_tuned", f"data.root={real_data_root}", "data.download=false",
                 "trainer.epochs=1", "trainer.progress=false", "trainer.report=false"]), run_dir=path)
    return path


@pytest.mark.slow
def test_lenet5_reaches_97_percent_on_the_real_mnist_test_split(lenet_run):
    m = json.loads((lenet_run / "metrics.json").read_text())
    assert m["status"] == "completed" and len(m["history"]) == 1
    assert m["best"]["test_acc"] >= 0.97, m["best"]
    assert m["best"]["val_acc"] >= 0.97


@pytest.mark.slow
def test_evaluate_on_the_test_split_equals_the_recorded_test_accuracy(lenet_run, tmp_path):
    recorded = json.loads((lenet_run / "metrics.json").read_text())["best"]["test_acc"]
    out = tmp_path / "eval.json"
    assert evaluate.main([f"run={lenet_run}", "split=test", f"json={out}", "device=cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["count"] == 10_000
    assert result["acc"] == pytest.approx(recorded, abs=1e-9)


@pytest.mark.slow
def test_predict_names_the_digit_of_real_test_images(lenet_run, real_data_root, tmp_path):
    raw = real_data_root / "MNIST" / "raw"
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:40]
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:40]
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img, "L").save(folder / f"{i:02d}.png")
    out = tmp_path / "pred.csv"
    assert predict.main([f"run={lenet_run}", f"input={folder}", f"csv={out}", "topk=1"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40
    right = sum(row["top1"] == str(labels[int(Path(row["path"]).stem)]) for row in rows)
    assert right >= 36, f"{right}/40 right"


@pytest.mark.slow
def test_a_fashion_mnist_epoch_in_memory(real_data_root, tmp_path):
    over = data_over(real_data_root, "fashion_mnist") + ["data.loader=memory"]
    bundle = build_data(compose(over).data, seed=0)
    assert isinstance(bundle.train, MemoryLoader) and bundle.info.class_names[9] == "Ankle boot"
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (54_000, 6_000, 10_000)
    run(compose(over + ["model=lenet5", "model.batch_norm=true", "scheduler=onecycle", "optimizer.lr=0.05",
                        "trainer.epochs=1", "trainer.limit_train_batches=200", "trainer.progress=false",
                        "trainer.report=false"]), run_dir=tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())  # 200 of 422 batches: 81% after 150 (seed 0)
    assert m["history"][0]["val_acc"] >= 0.78 and m["best"]["test_acc"] >= 0.78, m["best"]


def test_gz_as_distributed_and_extracted_files_give_the_same_data(real_data_root, tmp_path):
    """A root with two of MNIST's files extracted and two left as .gz reads the same as all-.gz."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for i, name in enumerate(MNIST_FILES):
        src = real_data_root / "MNIST" / "raw" / f"{name}.gz"
        if i % 2:
            with gzip.open(src) as f:
                (raw / name).write_bytes(f.read())
        else:
            shutil.copyfile(src, raw / f"{name}.gz")
    mixed = build_data(compose(data_over(tmp_path)).data, seed=0)
    gz = build_data(compose(data_over(real_data_root)).data, seed=0)
    for a, b in ((mixed.train, gz.train), (mixed.test, gz.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.bincount(gz.test.labels).tolist()[:3] == [980, 1135, 1032]  # MNIST's known test class counts


@pytest.mark.parametrize("damage", ["truncated", "not_gzip", "wrong_file"])
def test_a_damaged_file_is_one_line_naming_it_and_nothing_is_written(real_data_root, tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copyfile(real_data_root / "MNIST" / "raw" / f"{name}.gz", raw / f"{name}.gz")
    bad = raw / "t10k-images-idx3-ubyte.gz"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif damage == "not_gzip":
        bad.write_bytes(b"<html>404 Not Found</html>")
    else:  # the labels in the images' place
        shutil.copyfile(raw / "t10k-labels-idx1-ubyte.gz", bad)
    before = {p: p.read_bytes() for p in raw.iterdir()}
    with pytest.raises(DataError) as e:
        build_data(compose(data_over(tmp_path) + ["data.download=true"]).data, seed=0)
    msg = str(e.value)
    assert str(bad) in msg and "\n" not in msg
    assert {"truncated": "truncated", "not_gzip": "corrupt", "wrong_file": "not an IDX file of images"}[damage] in msg
    assert {p: p.read_bytes() for p in raw.iterdir()} == before and list(tmp_path.iterdir()) == [tmp_path / "MNIST"]
