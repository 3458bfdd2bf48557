"""The run report: every file a finished run writes next to its checkpoints, and what is in them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from resexp.config import compose
from resexp.records.epoch import EpochRecord
from resexp.reports import figures
from resexp.reports.metrics import confusion_matrix, per_class
from resexp.train import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = ["curves.png", "confusion_matrix.png", "predictions.png", "model_summary.txt",
                "best.safetensors", "model.json"]
TINY = ["data=synthetic", "data.num_samples=128", "data.image_size=16", "data.num_classes=3",
        "model.stages.depths=[1,1,1]", "trainer.epochs=2", "trainer.progress=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run")
    run(compose(TINY), run_dir=path)
    return path


def test_every_report_file_is_written(run_dir):
    for name in REPORT_FILES:
        assert (run_dir / name).is_file(), name
        assert (run_dir / name).stat().st_size > 0, name
    for name in ("curves.png", "confusion_matrix.png", "predictions.png"):
        assert (run_dir / name).read_bytes()[:8] == PNG_MAGIC, name
        with Image.open(run_dir / name) as im:
            assert im.format == "PNG" and min(im.size) >= 200, (name, im.size)
    summary = (run_dir / "model_summary.txt").read_text()
    assert "Total params" in summary and "[1, 3, 16, 16]" in summary


def test_per_class_metrics_in_metrics_json(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    pc = metrics["per_class"]
    assert list(pc) == ["class_0", "class_1", "class_2"]  # one entry per class, in class order
    for row in pc.values():
        assert set(row) == {"precision", "recall", "f1", "support"}
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and row["support"] > 0
    # the report evaluated the same model on the same val set as final_evaluation
    hits = sum(r["recall"] * r["support"] for r in pc.values())
    assert hits / sum(r["support"] for r in pc.values()) == pytest.approx(metrics["best"]["val_acc"], abs=1e-5)


def test_safetensors_export_rebuilds_the_best_model(run_dir):
    from resexp.inference import load_exported, load_run

    card = json.loads((run_dir / "model.json").read_text())
    assert card["class_names"] == ["class_0", "class_1", "class_2"]
    assert card["input_shape"] == [3, 16, 16] and card["data"]["name"] == "synthetic"
    assert card["normalisation"] == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    exported, _ = load_exported(run_dir)  # a freshly built model + load_file(best.safetensors)
    from_pt = load_run(run_dir).model  # a freshly built model + best.pt (weights_only)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(exported(x), from_pt(x))
    best_pt = torch.load(run_dir / "checkpoints/best.pt", weights_only=True)["model"]
    from safetensors.torch import load_file

    tensors = load_file(str(run_dir / "best.safetensors"))
    assert tensors.keys() == best_pt.keys() and all(torch.equal(tensors[k], best_pt[k]) for k in tensors)


def test_figures_in_tensorboard(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0}).Reload()
    assert {"val/confusion_matrix", "val/predictions"} <= set(events.Tags()["images"])


def test_per_class_from_a_known_confusion_matrix():
    preds = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    targets = torch.tensor([0, 1, 1, 1, 2, 2, 0])
    cm = confusion_matrix(preds, targets, 4)
    assert cm.tolist() == [[2, 0, 0, 0], [1, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    pc = per_class(cm, ["a", "b", "c", "d"])
    assert pc["a"] == {"precision": pytest.approx(2 / 3, abs=1e-6), "recall": 1.0, "f1": pytest.approx(0.8),
                       "support": 2}
    assert pc["b"]["precision"] == pytest.approx(2 / 3, abs=1e-6) and pc["b"]["recall"] == pytest.approx(2 / 3)
    assert pc["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}  # never seen: no NaN


def test_figures_cope_with_gaps_many_classes_and_grey_images(tmp_path):
    history = [EpochRecord(epoch=e, train_loss=1 / e, train_acc=e / 10) for e in range(1, 5)]
    history[1].val_loss, history[1].val_acc = 0.7, 0.5  # val_every=2
    history[3].val_loss, history[3].val_acc = 0.6, 0.6
    cm = torch.randint(0, 5, (100, 100))
    grey = torch.randn(5, 1, 8, 8)
    grid = figures.predictions(grey, torch.rand(5, 3).softmax(1), torch.tensor([0, 1, 2, 0, 1]),
                               ["a", "b", "a rather long class name"], [0.3], [0.3])
    many = figures.confusion(cm, [str(i) for i in range(100)])
    for name, fig in [("c.png", figures.curves(history, 4)), ("m.png", many), ("p.png", grid)]:
        figures.save_png(figures.render(fig), tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("names", [
    [str(i) for i in range(10)],  # the digits
    ["airplane", "automobile", "a rather long class name", "cat"],  # long names: rotated, cut at 18 characters
    [f"class_{i}" for i in range(37)],
    [str(i) for i in range(100)],  # too many to name: numbered ticks
])
def test_the_confusion_matrix_keeps_every_label_and_its_colour_bar_inside_the_figure(names):
    n = len(names)
    fig = figures.confusion(torch.randint(1, 50, (n, n)), names, title="val, best epoch 3:")
    figures.render(fig)
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # every label, title and tick drawn, in inches
    assert drawn.x0 >= 0 and drawn.y0 >= 0, drawn  # nothing cut at the left or the bottom
    assert drawn.x1 <= fig.get_figwidth() + 0.01 and drawn.y1 <= fig.get_figheight() + 0.01, drawn
    ax, bar = fig.axes
    assert bar.get_position().x0 > ax.get_position().x1  # the colour bar beside the matrix, not over it
