"""Plain CNN baselines the write-ups compare ResNets against (SEEDS.md, "Plain CNN baselines")."""

from __future__ import annotations

from torch import Tensor, nn


def _conv(in_channels: int, out_channels: int, padding: int, batch_norm: bool) -> list[nn.Module]:
    # With BN the conv bias is redundant (BN's shift replaces it).
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=padding, bias=not batch_norm)
    return [conv, nn.BatchNorm2d(out_channels)] if batch_norm else [conv]


def _head(sizes: list[int], num_classes: int, drop_rate: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
    if drop_rate > 0:
        layers.append(nn.Dropout(drop_rate))
    return nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))


def lenet5_side(image_size: int) -> int:
    """The feature map's side after two (valid 3x3 conv, 2x2 pool) rounds."""
    return ((image_size - 2) // 2 - 2) // 2


class LeNet5(nn.Module):
    """Modified LeNet-5 (SEEDS R6): [conv 6@3x3 -> maxpool2 -> ReLU] -> [conv 16@3x3 -> maxpool2 -> ReLU]
    -> dense 120 -> 84 -> num_classes, with 'valid' convs as in Keras; optional BN after each conv.

    The flatten size follows from `image_size` (a 28x28 input gives 16*5*5), so the parameter count
    is known before the first forward pass.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 batch_norm: bool = False, drop_rate: float = 0.0):
        super().__init__()
        side = lenet5_side(image_size)  # >= 1: BaselineConfig checks data.image_size
        self.features = nn.Sequential(
            *_conv(in_channels, 6, 0, batch_norm), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            *_conv(6, 16, 0, batch_norm), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        )
        self.classifier = _head([16 * side * side, 120, 84], num_classes, drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class VGG13(nn.Module):
    """VGG13 for CIFAR (SEEDS R7): five units of [conv3x3-ReLU, conv3x3-ReLU, maxpool2] with
    64/128/256/512/512 channels -> global average pool -> dense 256 -> 128 -> num_classes.

    On 32x32 input the fifth pool already leaves 1x1, so the average pool equals Keras' flatten
    there; it lets any other size through too, and ceil-mode pooling keeps maps smaller than 32
    from shrinking to nothing.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, batch_norm: bool = False,
                 drop_rate: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        for channels in (64, 128, 256, 512, 512):
            for _ in range(2):
                layers += [*_conv(in_channels, channels, 1, batch_norm), nn.ReLU(inplace=True)]
                in_channels = channels
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _head([512, 256, 128], num_classes, drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))
