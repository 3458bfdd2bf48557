"""Models: every config builds and trains a step, parity with torchvision and Keras, errors by message."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from resexp.errors import CheckpointError, ConfigError, ResexpError
from resexp.models import BLOCKS, STEMS, build_model, count_buffers, count_params, create, list_models
from resexp.models.blocks import Block

ROOT = Path(__file__).resolve().parents[1]
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808}
CIFAR_PARAMS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
                "resnet1202": 19.4}  # millions, He et al. 2016 Table 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These workloads are tiny: a second thread only adds synchronisation, and on a busy 2-core
    machine its spinning doubles the time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo():
    """Each network built once (1000 classes, so the parity tests can reuse it); freed after the module."""
    built: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in built:
            built[name] = create(name, num_classes=1000, in_channels=3, image_size=32)
        return built[name]

    yield get
    built.clear()


def _step(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Forward + backward: logits of the right shape and finite gradients everywhere."""
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


def test_list_models():
    names = list_models()
    assert names == sorted(names)
    for name in ["lenet5", "vgg13", "resnet18", "resnet50", "resnet50v2", "resnet152v2", "preact_resnet18",
                 "resnet20", "resnet1202"]:
        assert name in names


@pytest.mark.parametrize("name", [n for n in list_models() if n != "resnet1202"])
def test_every_model_builds_and_trains_a_step(zoo, name):
    torch.manual_seed(0)
    # 32x32: smaller maps leave the deep stages' train-mode BN with 2 values per channel, whose
    # 1/std gradients overflow through 23+ units; that is the input's fault, not the model's.
    _step(zoo(name), torch.randn(2, 3, 32, 32), 1000)


@pytest.mark.parametrize("name", ["resnet18", "resnet50v2", "preact_resnet18", "resnet20", "vgg13"])
def test_smallest_input(zoo, name):
    with torch.no_grad():
        assert zoo(name).eval()(torch.zeros(1, 3, 8, 8)).shape == (1, 1000)


@pytest.mark.parametrize("block", BLOCKS.list())
@pytest.mark.parametrize("stem", STEMS.list())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_block_stem_combinations(block, stem, in_channels):
    cfg = {"name": "tiny", "block": {"name": block}, "stem": stem,
           "stages": {"depths": [1, 2], "widths": [8, 16], "strides": [1, 2]}}
    model = build_model(cfg, num_classes=5, in_channels=in_channels)
    assert model.conv1.in_channels == in_channels
    _step(model, torch.randn(2, in_channels, 8, 8), 5)  # 8x8: the smallest input resexp supports


@pytest.mark.parametrize("position, last_dilation", [("first", 4), ("last", 2)])
def test_dilation_replaces_strides(position, last_dilation):
    # torchvision semantics: units after the one that would have strided see the larger dilation;
    # with the stride on a stage's last unit, that is the whole next stage.
    stages = {"depths": [2, 2, 2], "widths": [8, 8, 8], "strides": [1, 2, 2]}
    cfg = {"name": "tiny", "block": {"name": "bottleneck"}, "stages": stages, "stem": "cifar",
           "stride_position": position, "dilation": [True, True]}
    model = build_model(cfg, num_classes=3, in_channels=3)
    assert model.layer3[-1].conv2.dilation == (last_dilation, last_dilation)
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 3, 16, 16)).shape[-2:] == (16, 16)


@pytest.mark.parametrize("name", TORCHVISION_PARAMS)
def test_torchvision_parameter_counts(zoo, name):
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    assert count_params(zoo(name)) == TORCHVISION_PARAMS[name] == weights.meta["num_params"]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_strictly_and_matches(zoo, name):
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name).eval()
    ours = zoo(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-5


def test_keras_resnet_v2_counts(zoo):
    model = zoo("resnet50v2")
    assert count_params(model) == 25_568_360  # Keras: trainable
    assert count_buffers(model) == 45_440  # Keras: non-trainable BN statistics
    assert count_params(model) + count_buffers(model) == 25_613_800
    for name in ("resnet101v2", "resnet152v2"):
        assert zoo(name).stride_position == "last"


@pytest.mark.parametrize("name", CIFAR_PARAMS)
def test_cifar_parameter_counts(name):
    millions = count_params(create(name, num_classes=10, image_size=32)) / 1e6
    assert round(millions, 1 if millions > 1 else 2) == CIFAR_PARAMS[name]


def test_plain_blocks_have_no_shortcut_and_differ_from_residual():
    def tiny(block: str) -> nn.Module:
        stages = {"depths": [2, 2], "widths": [8, 16], "strides": [1, 2]}
        return build_model({"name": "t", "block": {"name": block}, "stages": stages, "stem": "cifar",
                            "zero_init_residual": False}, num_classes=4, in_channels=3)

    for plain_name, residual_name in [("plain_basic", "basic"), ("plain_bottleneck", "bottleneck")]:
        plain, residual = tiny(plain_name), tiny(residual_name)
        assert all(m.downsample is None for m in plain.modules() if isinstance(m, Block))
        assert not any("downsample" in k for k in plain.state_dict())
        missing = residual.load_state_dict(plain.state_dict(), strict=False).missing_keys
        assert missing and all("downsample" in k for k in missing)
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            assert not torch.allclose(plain.eval()(x), residual.eval()(x))


def test_zero_init_residual():
    def last_layers(model: nn.Module) -> list[torch.Tensor]:
        return [getattr(m, m.last).weight for m in model.modules() if isinstance(m, Block)]

    for block in ("basic", "bottleneck"):  # v1: on by default and when asked
        assert all((w == 0).all() for w in last_layers(create("resnet56", block=block)))
        assert all((w == 0).all() for w in last_layers(create("resnet20", block=block, zero_init_residual=True)))
    assert all((w == 1).all() for w in last_layers(create("resnet20")))  # its YAML turns it off (measured)
    for block in ("preact_basic", "preact_bottleneck"):  # v2: off by default
        assert all(w.abs().sum() > 0 for w in last_layers(create("resnet20", block=block)))
    with pytest.raises(ConfigError, match="zero_init_residual"):
        create("resnet20", block="plain_basic", zero_init_residual=True)


def test_create_overrides():
    model = create("resnet50", num_classes=7, block="preact_bottleneck", stages="r101", stem="cifar",
                   drop_rate=0.1)
    assert len(model.layer3) == 23 and model.block is BLOCKS.get("preact_bottleneck")
    assert model.conv1.kernel_size == (3, 3) and model.fc.out_features == 7
    assert isinstance(model.dropout, nn.Dropout)


@pytest.mark.parametrize("call, message", [
    (lambda: create("resnet18", block="nope"), "choose one of: basic, basic_pad, bottleneck"),
    (lambda: build_model({"name": "x", "block": {"name": "nope"}, "stages": {
        "depths": [1], "widths": [8], "strides": [1]}}, num_classes=2, in_channels=3), "unknown block 'nope'"),
    (lambda: create("resnet18", stem="nope"), "unknown stem 'nope'; choose one of: cifar, imagenet"),
    (lambda: create("nope"), "unknown model 'nope'; choose one of: lenet5, "),
    (lambda: create("resnet18", stride_position="middle"), "model.stride_position"),
    (lambda: create("resnet18", dilation=[True, True, True, True]), "model.dilation"),
    (lambda: create("resnet18", pretrained="NOPE"), "IMAGENET1K_V1, DEFAULT"),
    (lambda: create("resnet20", pretrained="DEFAULT"), "no torchvision twin"),
    (lambda: create("vgg13", pretrained="DEFAULT"), "no torchvision twin"),
    (lambda: create("resnet18", pretrained="missing/weights.pt"), "no such file"),
])
def test_config_errors_name_the_problem(call, message):
    with pytest.raises(ResexpError, match=message.replace("(", r"\(")):
        call()


def test_stages_of_different_lengths():
    cfg = {"name": "x", "block": {"name": "basic"}, "stages": {"depths": [1, 1], "widths": [8], "strides": [1]}}
    with pytest.raises(ConfigError, match=r"model\.stages"):
        build_model(cfg, num_classes=2, in_channels=3)


def test_missing_num_classes():
    from resexp.config import compose

    with pytest.raises(ConfigError, match=r"model\.num_classes"):
        build_model(compose(["model=resnet20"]).model, in_channels=3)
    model = build_model(compose(["model=resnet20", "model.num_classes=3"]).model, num_classes=9, in_channels=3)
    assert model.fc.out_features == 3  # the config wins over the data set's count


def test_pretrained_offline_gives_one_line_error(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: it has to download
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ResexpError, match="could not fetch torchvision weights") as info:
        create("resnet18", num_classes=10, pretrained="DEFAULT")
    assert "\n" not in str(info.value) and "model.pretrained=/path/to/resnet18-" in str(info.value)


def test_pretrained_from_local_file(tmp_path):
    source = torchvision.models.resnet18()
    theirs = source.state_dict()
    torch.save(theirs, tmp_path / "it's raw.pth")  # create() must quote the path for Hydra
    torch.save({"model": theirs, "epoch": 3}, tmp_path / "checkpoint.pt")  # a resexp checkpoint
    for file in ("it's raw.pth", "checkpoint.pt"):
        model = create("resnet18", num_classes=10, pretrained=str(tmp_path / file))
        ours = model.state_dict()
        assert all(torch.equal(ours[k], v) for k, v in theirs.items() if not k.startswith("fc."))
        assert model.fc.out_features == 10  # a fresh classifier for the new class count


def test_pretrained_file_that_does_not_fit(tmp_path):
    path = tmp_path / "resnet32.pt"
    torch.save(create("resnet32", num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit this model.*unexpected: layer1.3"):
        create("resnet20", num_classes=10, pretrained=str(path))


def _summary(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "resexp.summary", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_summary_command(capsys):
    from resexp import summary

    assert summary.main(["model=resnet20", "model.num_classes=10", "model.in_channels=1", "data.image_size=32"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 270,810" in out and "Trainable params: 269,434" in out
    assert "layer3.2.conv2" in out


def test_summary_command_bad_key():
    done = _summary("model.nope=1")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and "nope" in done.stderr
