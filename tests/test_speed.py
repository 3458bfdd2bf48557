"""The speed work on CPU: the cifar10_fast preset composes and runs, and the benchmark harness works.
Timings are not asserted here (they live in benchmarks/RESULTS.md); the GPU checks are tests/test_gpu.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from resexp.config import compose
from resexp.train import run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

# CIFAR's shape, tiny: 3x32x32, 10 classes; a couple of batches on the CPU in float32, eagerly.
CIFAR_SHAPED = ["data=synthetic", "data.image_size=32", "data.num_classes=10", "data.channels=3",
                "data.num_samples=60", "data.val_split=0.2", "data.batch_size=8", "data.eval_batch_size=16"]
CPU_SMALL = ["trainer.device=cpu", "trainer.precision=32", "trainer.compile=false", "trainer.epochs=1",
             "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.progress=false",
             "trainer.report=false"]


def test_cifar10_fast_composes_as_a_fast_large_batch_recipe():
    cfg = compose(["experiment=cifar10_fast"])
    assert cfg.model.name == "resnet18" and cfg.model.stem == "cifar"
    assert cfg.data.name == "cifar10" and cfg.data.augment.crop_padding == 4 and cfg.data.augment.flip
    assert cfg.data.batch_size >= 512 or 50_000 % cfg.data.batch_size == 0
    t = cfg.trainer
    assert (t.precision, t.channels_last, t.compile, t.tta_flip) == ("bf16", True, True, True)
    assert t.label_smoothing > 0 and 15 <= t.epochs <= 20 and t.val_every > 1
    o = cfg.optimizer
    assert o.name == "sgd" and o.nesterov and o.scale_lr_batch and cfg.scheduler.warmup_epochs > 0


@pytest.mark.slow
def test_cifar10_fast_runs_one_short_epoch_on_cifar_shaped_data(tmp_path):
    run(compose(["experiment=cifar10_fast", *CIFAR_SHAPED, *CPU_SMALL]), run_dir=tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "completed" and len(m["history"]) == 1
    assert m["history"][0]["val_acc"] is not None  # the last epoch is always validated (with flip TTA)
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert state["model"]["conv1.weight"].shape == (64, 3, 3, 3)  # the CIFAR stem
    # lr 0.1 quoted per 128 images, scaled linearly to the batch of 8
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.1 * 8 / 128)


def test_training_flops_per_image_match_the_published_counts():
    import bench_train

    gflop = {name: bench_train.train_flops_per_image(_model(name), bench_train.CASES[name]) / 1e9
             for name in ("resnet18_cifar", "resnet50_224")}
    # forward MACs: 0.56 G (CIFAR ResNet-18), 4.1 G (ResNet-50 at 224); training = 3 x 2 x MACs
    assert gflop["resnet18_cifar"] == pytest.approx(3 * 2 * 0.556, rel=0.03)
    assert gflop["resnet50_224"] == pytest.approx(3 * 2 * 4.11, rel=0.03)


def _model(case_name):
    import bench_train

    from resexp.models import create

    case = bench_train.CASES[case_name]
    stem = {"stem": "cifar"} if case_name == "resnet18_cifar" else {}
    return create(case.model, num_classes=case.num_classes, in_channels=case.channels,
                  image_size=case.image_size, **stem)


def test_throughput_benchmark_runs_both_loops_on_the_same_tensors():
    import bench_train

    row = bench_train.run_case(bench_train.CASES["resnet20_digits"], torch.device("cpu"), "fp32", repeats=1,
                               batch=8, steps=1, warmup=1)
    assert row["resexp_img_s"] > 0 and row["reference_img_s"] > 0 and row["ratio"] > 0
    assert row["reference_model"].startswith("resexp resnet20")  # no torchvision twin for resnet20
    assert set(row["samples"]) == {"resexp", "reference"}


def test_step_profiler_names_where_the_time_goes(tmp_path):
    import profile_step

    out = profile_step.main(["--device", "cpu", "--case", "resnet20_digits", "--batch", "8", "--steps", "2",
                             "--warmup", "1", "--json", str(tmp_path / "p.json")])
    assert out["variant"] == "fp32" and 0 < out["busy_ms_per_step"] <= out["wall_ms_per_step"]
    assert any("convolution" in row["op"] for row in out["top"][:3])  # a ResNet's step is its convolutions
    assert json.loads((tmp_path / "p.json").read_text())["top"] == out["top"]


def test_torchvision_twins_load_resexp_weights_strictly():
    import bench_train

    for name in ("resnet18_cifar", "resnet50_224"):
        case = bench_train.CASES[name]
        twin = bench_train.torchvision_model(case.torchvision_twin, case.num_classes)
        twin.load_state_dict(_model(name).state_dict(), strict=True)


def test_resume_into_a_new_directory_brings_the_checkpoints_along(tmp_path):
    # Found by the GPU resume test: a resumed run writing to another directory (what the CLI does:
    # every run gets a new outputs/<date>/<time>) that never improves on the best-so-far had no best.pt
    # to re-evaluate at the end. Here the resumed run's one more epoch runs at a learning rate of 0
    # (constant schedule at lr 0: the weights cannot move, so it cannot improve).
    tiny = ["model=resnet20", "model.stages.depths=[1,1]", "model.stages.widths=[8,16]", "model.stages.strides=[1,2]",
            "data=synthetic", "data.num_samples=48", "data.image_size=8", "data.num_classes=2",
            "data.batch_size=16", "scheduler=constant", "scheduler.warmup_epochs=0", "optimizer.lr=0", *CPU_SMALL]
    run(compose(tiny), run_dir=tmp_path / "first")
    run(compose([*tiny, "trainer.epochs=2", f"trainer.resume={tmp_path / 'first'}"]), run_dir=tmp_path / "second")
    assert (tmp_path / "second/checkpoints/best.pt").is_file()
    assert (tmp_path / "second/checkpoints/last.pt").is_file()  # the new directory can be resumed from
    m = json.loads((tmp_path / "second/metrics.json").read_text())
    assert m["status"] == "completed" and m["best"]["epoch"] == 1 and len(m["history"]) == 2
