"""Stems: the layers before the first stage, registered by name for `model.stem=<name>`.

A stem is `stem(in_channels, out_channels, preact) -> OrderedDict` with the keys conv1, bn1,
relu, maxpool (nn.Identity where a layer is absent). ResNet adds them as top-level attributes,
so the state-dict keys match torchvision (conv1.weight, bn1.*).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from resexp.registry import Registry

Stem = Callable[[int, int, bool], "OrderedDict[str, nn.Module]"]
STEMS: Registry[Stem] = Registry("stem")


def _stem(in_channels: int, out_channels: int, preact: bool, kernel_size: int, stride: int,
          pool: bool) -> OrderedDict[str, nn.Module]:
    # A pre-activation network normalises at the start of every unit, so its stem is a bare conv,
    # with a bias as in Keras ResNet50V2 (no BN follows to absorb it).
    layers = OrderedDict(
        conv1=nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=preact),
        bn1=nn.Identity() if preact else nn.BatchNorm2d(out_channels),
        relu=nn.Identity() if preact else nn.ReLU(inplace=True),
        maxpool=nn.Identity(),
    )
    if pool:
        # After a ReLU, -inf padding (PyTorch) and zero padding (Keras) give the same maximum; the
        # v2 stem has no ReLU, so it pads with zeros explicitly to match Keras.
        layers["maxpool"] = (nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, 2)) if preact
                             else nn.MaxPool2d(3, 2, padding=1))
    return layers


@STEMS.register("imagenet")
def imagenet_stem(in_channels: int, out_channels: int, preact: bool = False) -> OrderedDict[str, nn.Module]:
    """conv7x7/2 -> BN -> ReLU -> maxpool3x3/2 (He et al. 2016): the map shrinks 4x."""
    return _stem(in_channels, out_channels, preact, kernel_size=7, stride=2, pool=True)


@STEMS.register("cifar")
def cifar_stem(in_channels: int, out_channels: int, preact: bool = False) -> OrderedDict[str, nn.Module]:
    """conv3x3/1 -> BN -> ReLU, no pool: keeps a 32x32 input at full size for the first stage."""
    return _stem(in_channels, out_channels, preact, kernel_size=3, stride=1, pool=False)
