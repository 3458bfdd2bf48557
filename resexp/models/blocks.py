"""Residual units, registered by name for `model/block=<name>`.

Every block is built as `Block(in_channels, width, stride=1, dilation=1)` and returns
`width * expansion` channels, so ResNet stacks any of them the same way. Class attributes tell
ResNet how to wire the network around a block:

- `expansion`: output channels / width (1 for basic, 4 for bottleneck blocks).
- `preact`: BN-ReLU opens the unit (ResNet v2), so the stem has no BN/ReLU of its own and the
  network needs a final BN-ReLU before pooling.
- `residual`: False for the plain baselines of the degradation experiment (no shortcut at all).
- `shortcut`: how a v1 block matches shapes: "projection" (conv1x1 + BN, option B of He et al.
  2016, torchvision) or "pad" (subsample + zero channels, option A: the paper's CIFAR networks).
- `zero_init_default`: whether `zero_init_last()` runs unless `model.zero_init_residual` says.

v1 blocks use torchvision's module names (conv1, bn1, ..., downsample.0/1), so torchvision
state dicts load into them strictly.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from resexp.registry import Registry

BLOCKS: Registry[type[Block]] = Registry("block")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding = dilation keeps the map size (divided by the stride) for every dilation
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias)


class PadShortcut(nn.Module):
    """Option A shortcut: x subsampled by `stride`, new channels filled with zeros. No weights, which
    is why the CIFAR ResNets of He et al. 2016 have 0.27M (ResNet-20) .. 19.4M (ResNet-1202) params."""

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - x.shape[1]))

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, stride={self.stride}"


class Block(nn.Module):
    """Base of every unit: the class attributes described above, and the v1 shortcut helpers."""

    expansion = 1
    preact = False
    residual = True
    shortcut = "projection"
    zero_init_default = True
    last: str  # the residual branch's last scaling layer: the one zero_init_last() zeroes

    def zero_init_last(self) -> None:
        """Zero the branch's last scale, so the unit starts as its shortcut (Goyal et al. 2017)."""
        nn.init.zeros_(getattr(self, self.last).weight)

    def _v1_shortcut(self, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
        # Only where the shape changes; elsewhere the shortcut is x itself.
        if not self.residual or (stride == 1 and in_channels == out_channels):
            return None
        if self.shortcut == "pad" and out_channels >= in_channels:
            return PadShortcut(out_channels, stride)
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))

    def _v1_merge(self, x: Tensor, out: Tensor) -> Tensor:
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


@BLOCKS.register("basic")
class BasicBlock(Block):
    """ResNet v1 basic block: conv3x3(stride)-BN-ReLU-conv3x3-BN, add shortcut, ReLU."""

    last = "bn2"

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride, dilation)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = self._v1_shortcut(in_channels, width * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self._v1_merge(x, self.bn2(self.conv2(out)))


@BLOCKS.register("bottleneck")
class Bottleneck(Block):
    """ResNet v1.5 bottleneck: conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, add, ReLU.

    The stride sits on the 3x3 (torchvision, "v1.5"), not on the first 1x1 as in the paper,
    which would discard 3/4 of the input before any 3x3 sees it.
    """

    expansion = 4
    last = "bn3"

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = self._v1_shortcut(in_channels, width * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._v1_merge(x, self.bn3(self.conv3(out)))


@BLOCKS.register("basic_pad")
class BasicPadBlock(BasicBlock):
    """BasicBlock with the parameter-free option A shortcut, as in the paper's CIFAR experiments."""

    shortcut = "pad"


@BLOCKS.register("plain_basic")
class PlainBasicBlock(BasicBlock):
    """BasicBlock without its shortcut: the "plain" network of He et al. 2016, Fig. 3/4."""

    residual = False
    zero_init_default = False  # zeroing the last BN of a plain unit would cut the signal


@BLOCKS.register("plain_bottleneck")
class PlainBottleneck(Bottleneck):
    """Bottleneck without its shortcut."""

    residual = False
    zero_init_default = False


class PreActBlock(Block):
    """Full pre-activation unit (He et al. 2016b): BN-ReLU come first and nothing follows the add,
    so the shortcut path stays a pure identity from block to block."""

    preact = True
    zero_init_default = False

    def _merge(self, x: Tensor, preact: Tensor, out: Tensor) -> Tensor:
        if not self.residual:
            return out
        if self.downsample is None:
            return out + x
        # A projection sees the normalised input; a 1x1 max pool just subsamples x itself.
        return out + self.downsample(preact if isinstance(self.downsample, nn.Conv2d) else x)


@BLOCKS.register("preact_basic")
class PreActBasicBlock(PreActBlock):
    """Pre-activation basic block as kuangliu/pytorch-cifar PreActBlock: BN-ReLU-conv3x3(stride)-
    BN-ReLU-conv3x3, plus a bias-free conv1x1 shortcut on the pre-activation where the shape changes."""

    last = "conv2"

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_channels, width, stride, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, dilation=dilation)
        shape_changes = stride != 1 or in_channels != width
        self.downsample = conv1x1(in_channels, width, stride) if self.residual and shape_changes else None

    def forward(self, x: Tensor) -> Tensor:
        preact = self.relu(self.bn1(x))
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        return self._merge(x, preact, out)


@BLOCKS.register("preact_bottleneck")
class PreActBottleneck(PreActBlock):
    """The Keras ResNet50V2 unit (keras.applications.resnet_v2, block2):
    preact = BN-ReLU(x); conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x, with bias).
    Shortcut: conv1x1(stride, with bias) on preact when the channel count changes, else x,
    subsampled by a 1x1 max pool when stride > 1 (Keras puts the stride on a stack's last unit)."""

    expansion = 4
    last = "conv3"

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_channels, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, dilation)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels, bias=True)
        self.downsample: nn.Module | None = None
        if self.residual and in_channels != out_channels:
            self.downsample = conv1x1(in_channels, out_channels, stride, bias=True)
        elif self.residual and stride > 1:
            self.downsample = nn.MaxPool2d(kernel_size=1, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        preact = self.relu(self.bn1(x))
        out = self.relu(self.bn2(self.conv1(preact)))
        out = self.relu(self.bn3(self.conv2(out)))
        return self._merge(x, preact, self.conv3(out))
