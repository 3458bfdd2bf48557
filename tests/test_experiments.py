"""Every preset in conf/experiment composes and trains one short epoch on synthetic data of its shape.

`experiment=<p> data=synthetic`: the command line's data group wins over the preset's
`override /data: ...`, and the preset's own `data:` values (batch size, normalisation,
augmentation, ...) are merged on top of the synthetic set, so they survive. What comes from the
preset's data *group* file (e.g. cifar10.yaml's defaults) and is not repeated in the preset is
replaced by the synthetic set's values; test_preset_values_survive_a_data_swap checks exactly that.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from resexp.config import compose, conf_dir
from resexp.data import DATASETS
from resexp.train import run

PRESETS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
SEED_PRESETS = [f"r{i}_{name}" for i, name in enumerate(
    ["cifar100_resnet18", "cifar100_resnet18", "cifar10_resnet18", "birds_resnet50v2", "birds_resnet50v2",
     "mnist_lenet5", "cifar10_vgg13"], start=1)]
HEAVY = 96  # image size from which a preset runs one batch of 2 (224x224 ResNet-50s on CPU) ...
FULL_SIZE = "r4_birds_resnet50v2"  # ... and, but for this one, at 64x64: the same network and recipe
REPORTED = "r6_mnist_lenet5"  # the one preset whose run also writes the after-run report (a light one)


@cache
def composed(name: str):
    """The preset as a user gets it (read only: callers must not modify it)."""
    return compose([f"experiment={name}"])


def preset_file(name: str) -> Path:
    return conf_dir() / "experiment" / f"{name}.yaml"


def leaves(node, prefix: str = "") -> dict:
    """{dotted key: value} for every leaf of a plain nested dict."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def shape_of(cfg) -> tuple[int, int, int]:
    """(image size, channels, classes) of the preset's own data set, without reading its files."""
    from resexp.data import describe
    from resexp.errors import ResexpError

    try:
        info = describe(cfg.data)  # digits, synthetic, torchvision sets: from the config alone
        return info.image_size, info.in_channels, info.num_classes
    except ResexpError:  # an image folder (birds) lists its class folders: data.root is not here
        ds = DATASETS.get(cfg.data.name)
        return int(cfg.data.image_size), int(cfg.data.channels or ds.native_channels), int(cfg.data.num_classes)


def test_every_seed_recipe_has_a_preset_and_a_tuned_one():
    for name in SEED_PRESETS:
        assert name in PRESETS and f"{name}_tuned" in PRESETS, name
    assert "birds_finetune" in PRESETS
    for name in [*SEED_PRESETS, *(f"{n}_tuned" for n in SEED_PRESETS), "birds_finetune"]:
        text = preset_file(name).read_text()
        assert text.startswith("# @package _global_\n"), name
        if name.endswith(("_tuned", "finetune")):  # a target, or what was measured: never a bare claim
            assert ("TARGET" in text) != ("MEASURED" in text), name
        else:
            assert "TARGET" not in text, name
    for name in ("r6_mnist_lenet5", "r6_mnist_lenet5_tuned", "mnist_resnet", "fashion_mnist_resnet"):
        assert "MEASURED" in preset_file(name).read_text(), name  # real data was at hand for these


@pytest.mark.parametrize("name", PRESETS)
def test_preset_values_survive_a_data_swap(name):
    own = composed(name)
    swapped = compose([f"experiment={name}", "data=synthetic"])
    assert swapped.data.name == "synthetic"
    for group in ("model", "optimizer", "scheduler", "trainer"):
        assert swapped[group] == own[group], group
    data = OmegaConf.to_container(OmegaConf.load(preset_file(name))).get("data") or {}
    for key, value in leaves(data).items():
        assert OmegaConf.select(swapped.data, key) == value, f"data.{key}"
        assert OmegaConf.select(own.data, key) == value, f"data.{key}"


@pytest.mark.parametrize("name", [pytest.param(p, marks=pytest.mark.slow) if p.startswith(("r4", "r5", "birds"))
                                  else p for p in PRESETS])
def test_preset_trains_one_short_epoch(name, tmp_path):
    """The preset's model, optimizer, schedule, trainer and augmentation settings at its input shape
    and class count: 2 steps of 2 images (1 step at 224x224), 2 validation images. The batch size
    and validation split are the only recipe values replaced, and the input size of all but one of
    the 224x224 presets (for time: ResNet-50s on 2 CPU cores); the test above checks that the preset's
    own values survive the data swap."""
    own = composed(name)
    size, channels, classes = shape_of(own)
    heavy = size >= HEAVY
    size = size if not heavy or name == FULL_SIZE else 64
    samples = max(16, 2 * classes)  # the synthetic set's minimum is 2 per class
    overrides = [
        f"experiment={name}", "data=synthetic", f"data.image_size={size}", f"data.channels={channels}",
        f"data.num_classes={classes}", f"data.num_samples={samples}", f"data.val_split={2 / samples}",
        "data.batch_size=2", "data.num_workers=0", "trainer.epochs=1",
        f"trainer.limit_train_batches={1 if heavy else 2}", "trainer.limit_val_batches=1",
        "model.pretrained=null", "trainer.precision=32", "trainer.compile=false", "trainer.progress=false",
        # the after-run report is tested in test_reports.py; here once, as a preset configures it
        f"trainer.report={name == REPORTED}",
    ]
    cfg = compose(overrides)
    best = run(cfg, run_dir=tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0.0 <= best <= 1.0
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    if name == REPORTED:
        assert len(metrics["per_class"]) == classes and (tmp_path / "best.safetensors").is_file()
    saved = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert saved.model.name == own.model.name and saved.optimizer == own.optimizer
    assert saved.scheduler == own.scheduler
    assert saved.data.augment == own.data.augment
