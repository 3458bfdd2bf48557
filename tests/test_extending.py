"""The README's "Extending" recipe: one registered class plus one YAML file make a usable block."""

from __future__ import annotations

import shutil

import torch
from torch import nn

from resexp.config import compose
from resexp.models import build_model
from resexp.models.blocks import BLOCKS, BasicBlock


def test_a_new_block_is_one_class_and_one_yaml(tmp_path, monkeypatch):
    if "se_basic" not in BLOCKS:

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
