"""The README's "Extending" recipes: a block is one registered class plus one YAML file; an optimizer
is one schema class, one registered function and one YAML file."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from resexp.config import compose
from resexp.models import build_model
from resexp.models.blocks import BLOCKS, BasicBlock


def test_a_new_block_is_one_class_and_one_yaml(tmp_path, monkeypatch):
    monkeypatch.setattr(BLOCKS, "_items", dict(BLOCKS._items))  # registered for this test only

    @BLOCKS.register("se_basic")
    class SEBasicBlock(BasicBlock):
        def __init__(self, in_channels, width, stride=1, dilation=1):
            super().__init__(in_channels, width, stride, dilation)
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width // 4, 1), nn.ReLU(),
                                    nn.Conv2d(width // 4, width, 1), nn.Sigmoid())

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self._v1_merge(x, out * self.se(out))

    from resexp import config

    conf = tmp_path / "conf"
    shutil.copytree(config.conf_dir(), conf)
    (conf / "model" / "block" / "se_basic.yaml").write_text("name: se_basic\n")
    monkeypatch.setattr(config, "conf_dir", lambda: conf)

    cfg = compose(["model=resnet18", "model/block=se_basic"])
    model = build_model(cfg.model, num_classes=10, in_channels=3)
    assert any(name.endswith(".se.1.weight") for name, _ in model.named_parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_a_new_optimizer_is_one_schema_one_function_and_one_yaml(tmp_path, monkeypatch):
    """The README's RMSprop example, as written there."""
    from dataclasses import dataclass

    from resexp import config
    from resexp.errors import ConfigError
    from resexp.optim import OPTIMIZERS, build_optimizer
    from resexp.schemas import SCHEMAS, OptimizerConfig, register_schema

    # registered for this test only (other tests list the optimizers)
    monkeypatch.setitem(SCHEMAS, "optimizer", dict(SCHEMAS["optimizer"]))
    monkeypatch.setattr(OPTIMIZERS, "_items", dict(OPTIMIZERS._items))

    @dataclass
    class RMSpropConfig(OptimizerConfig):
        alpha: float = 0.99
        eps: float = 1e-8
        momentum: float = 0.0
        centered: bool = False

    register_schema("optimizer", RMSpropConfig, "rmsprop")

    @OPTIMIZERS.register("rmsprop")
    def rmsprop(groups, cfg, lr, device):
        return torch.optim.RMSprop(groups, lr=lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum,
                                   centered=cfg.centered)

    conf = tmp_path / "conf"
    shutil.copytree(config.conf_dir(), conf)
    (conf / "optimizer" / "rmsprop.yaml").write_text(
        "defaults:\n  - rmsprop_schema\n  - _self_\n\nname: rmsprop\nlr: 0.01\n")
    monkeypatch.setattr(config, "conf_dir", lambda: conf)

    cfg = compose(["optimizer=rmsprop", "optimizer.alpha=0.9"])
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, cfg.optimizer, batch_size=8, device=torch.device("cpu"))
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["alpha"] == 0.9 and opt.defaults["lr"] == 0.01
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    with pytest.raises(ConfigError, match=r"^optimizer.nesterov is not a key of optimizer=rmsprop \(its keys: .*alpha"):
        compose(["optimizer=rmsprop", "optimizer.nesterov=true"])
