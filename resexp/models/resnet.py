"""The one ResNet class: a stem, N stages of any registered block, a pooled linear head.

ResNet-18..152 (v1), ResNet50V2..152V2 (Keras layout), pre-activation and plain variants and the
CIFAR 6n+2 networks are all this class with different arguments (see conf/model/*.yaml).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from resexp.models.blocks import BLOCKS, Block
from resexp.models.stems import STEMS


class ResNet(nn.Module):
    """Args:
        block: a Block subclass, or its name in resexp.models.blocks.BLOCKS.
        depths, widths, strides: units, inner width and stride of each stage (one entry per stage).
        stem: a key of STEMS; its width is widths[0] * width.
        stride_position: "first" puts a stage's stride on its first unit (torchvision), "last" on
            its last unit (Keras ResNet50V2).
        width: multiplier on every width.
        dilation: one bool per stage after the first: replace that stage's stride by dilation
            (torchvision's replace_stride_with_dilation), keeping the map larger.
        zero_init_residual: zero each block's last layer; None = the block's zero_init_default.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, block: type[Block] | str, depths: Sequence[int], widths: Sequence[int],
                 strides: Sequence[int], num_classes: int = 1000, in_channels: int = 3,
                 stem: str = "imagenet", stride_position: str = "first", width: float = 1.0,
                 dilation: Sequence[bool] = (), zero_init_residual: bool | None = None,
                 drop_rate: float = 0.0):
        super().__init__()
        block = BLOCKS.get(block) if isinstance(block, str) else block
        zero_init = block.zero_init_default if zero_init_residual is None else zero_init_residual
        widths = [max(1, round(w * width)) for w in widths]
        self.block = block
        self.stride_position = stride_position
        self.inplanes = widths[0]  # channels into the next unit (torchvision name); _make_layer advances it
        self.dilation = 1  # current dilation, multiplied up by every dilated stage

        for name, layer in STEMS.get(stem)(in_channels, widths[0], block.preact).items():
            self.add_module(name, layer)
        dilate = [False, *dilation] + [False] * (len(depths) - 1 - len(dilation))
        self.stage_names = [f"layer{i}" for i in range(1, len(depths) + 1)]
        for name, *args in zip(self.stage_names, widths, depths, strides, dilate, strict=True):
            self.add_module(name, self._make_layer(*args))
        self.num_features = self.inplanes
        # v2 units end with an un-normalised add, so the network normalises once before pooling.
        self.post_bn = nn.BatchNorm2d(self.num_features) if block.preact else nn.Identity()
        self.post_relu = nn.ReLU(inplace=True) if block.preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init)

    def _make_layer(self, width: int, depth: int, stride: int, dilate: bool) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        strided = 0 if self.stride_position == "first" else depth - 1
        units = []
        for i in range(depth):
            # Units up to the one that would have strided still see the old resolution.
            dilation = previous_dilation if i <= strided else self.dilation
            units.append(self.block(self.inplanes, width, stride if i == strided else 1, dilation))
            self.inplanes = width * self.block.expansion
        return nn.Sequential(*units)

    def _init_weights(self, zero_init: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init:
            for m in self.modules():
                if isinstance(m, Block):
                    m.zero_init_last()

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map (after the final BN-ReLU of v2 networks)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.post_relu(self.post_bn(x))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return self.fc(self.dropout(x))
