"""Networks from configs: `build_model(cfg.model, ...)`, and the Python API `create(name, ...)`.

`model.arch` picks a builder from ARCHS; ResNets take their block, stages and stem by registered
name (BLOCKS, STEMS). Every network has a YAML file in conf/model/; `list_models()` lists them.
"""

from __future__ import annotations

import re
from dataclasses import is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from resexp.config import compose, conf_dir, schema_of, typed
from resexp.errors import ConfigError
from resexp.models.baselines import VGG13, LeNet5
from resexp.models.blocks import BLOCKS
from resexp.models.pretrained import load_backbone, load_pretrained, pretrained_state_dict
from resexp.models.resnet import ResNet
from resexp.models.stems import STEMS
from resexp.models.summary import count_buffers, count_params, model_summary
from resexp.registry import Registry

__all__ = ["ARCHS", "BLOCKS", "STEMS", "LeNet5", "ResNet", "VGG13", "build_model", "count_buffers",
           "count_params", "create", "list_models", "load_pretrained", "model_summary"]

# builder(cfg, num_classes, in_channels, image_size) -> nn.Module
ARCHS: Registry[Any] = Registry("arch")


@ARCHS.register("resnet")
def _resnet(cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    for key in ("block", "stages"):
        if cfg[key] is None:
            raise ConfigError(f"model.{key} is required for arch resnet (e.g. model/{key}=...)")
    return ResNet(cfg.block.name, list(cfg.stages.depths), list(cfg.stages.widths),
                  list(cfg.stages.strides), num_classes=num_classes, in_channels=in_channels,
                  stem=cfg.stem, stride_position=cfg.stride_position, width=cfg.width,
                  dilation=list(cfg.dilation), zero_init_residual=cfg.zero_init_residual,
                  drop_rate=cfg.drop_rate)


@ARCHS.register("lenet5")
def _lenet5(cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return LeNet5(num_classes, in_channels, image_size, batch_norm=cfg.batch_norm, drop_rate=cfg.drop_rate)


@ARCHS.register("vgg13")
def _vgg13(cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return VGG13(num_classes, in_channels, batch_norm=cfg.batch_norm, drop_rate=cfg.drop_rate)


def _typed(cfg: Any) -> DictConfig:
    """The model config checked against its arch's schema (composed configs already are)."""
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is schema_of("model", cfg):
        return cfg
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return OmegaConf.structured(cfg)
    return typed("model", cfg)


def build_model(cfg: Any, *, num_classes: int | None = None, in_channels: int | None = None,
                image_size: int = 32) -> nn.Module:
    """Build the network `cfg` (the `model` config: DictConfig, ModelConfig or dict) describes.

    num_classes / in_channels / image_size come from the data set; `model.num_classes` and
    `model.in_channels`, when set, win. Loads `model.pretrained` weights when given.
    """
    cfg = _typed(cfg)
    num_classes = cfg.num_classes if cfg.num_classes is not None else num_classes
    in_channels = cfg.in_channels if cfg.in_channels is not None else in_channels
    if num_classes is None:
        raise ConfigError("model.num_classes is not set and the data set gave none: pass model.num_classes=N")
    if in_channels is None:
        raise ConfigError("model.in_channels is not set and the data set gave none: pass model.in_channels=C")
    builder = ARCHS.get(cfg.arch)
    # Weights first: a bad name, a missing file or no network fail before the (slow) initialisation.
    state = pretrained_state_dict(cfg.pretrained, cfg.name, cfg.arch) if cfg.pretrained else None
    model = builder(cfg, num_classes, in_channels, image_size)
    if state is not None:
        load_backbone(model, state, f"model.pretrained={cfg.pretrained}")
    return model


def stem_stride(stem: str) -> int:
    """How many times a stem shrinks the map, measured on a probe (a registered stem is any layers)."""
    import torch

    layers = nn.Sequential(STEMS.get(stem)(1, 1, False)).eval()
    with torch.no_grad():
        side = layers(torch.zeros(1, 1, 64, 64)).shape[-1]
    return max(1, 64 // side)


def check_image_size(cfg: Any, image_size: int) -> None:
    """A ResNet's input against its downsampling, before any data is read: below twice the stem's
    stride the first stage already sees a 1x1 map, all image structure gone (the network still
    runs, on padding, and learns nothing from the layout). Networks without a stem check their own."""
    cfg = _typed(cfg)
    if cfg.arch != "resnet" or cfg.stages is None or "stem" not in cfg:
        return
    first = stem_stride(cfg.stem)
    dilated = list(cfg.dilation) + [False] * len(cfg.stages.strides)
    total = first
    for i, stride in enumerate(cfg.stages.strides):
        total *= 1 if i > 0 and dilated[i - 1] else stride
    if image_size < 2 * first:
        other = ", or model.stem=cifar (no downsampling in the stem)" if cfg.stem != "cifar" else ""
        raise ConfigError(
            f"data.image_size={image_size} is too small for model={cfg.name}: its {cfg.stem} stem shrinks the "
            f"map {first}x ({total}x in all), so it needs data.image_size >= {2 * first} ({total} or more keeps "
            f"every stage above 1x1){other}"
        )


def list_models() -> list[str]:
    """The network names `model=<name>` and create() accept: conf/model/*.yaml."""
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def _override_value(value: Any) -> str:
    """A Python value in Hydra's override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, str):  # quoted, so that "true", "1" or a path stay strings
        # In Hydra's quoted strings a backslash escapes only a quote, or the backslashes just before
        # a quote or the closing quote: double those, escape the quotes, leave the rest as is.
        escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), value)
        return f"'{escaped}'"
    return repr(value)


def create(name: str, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
           **overrides: Any) -> nn.Module:
    """Build conf/model/<name>.yaml exactly as `model=<name>` on the command line would.

    `block=` and `stages=` pick config-group files (model/block=..., model/stages=...); any other
    keyword sets `model.<key>`: `create("resnet50", num_classes=10, block="preact_bottleneck",
    stem="cifar", drop_rate=0.2)`.
    """
    if name not in list_models():
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    args = [f"model={name}"]
    for key, value in overrides.items():
        if key in ("block", "stages"):
            choices = sorted(p.stem for p in (conf_dir() / "model" / key).glob("*.yaml"))
            if value not in choices:
                raise ConfigError(f"unknown model/{key} '{value}'; choose one of: {', '.join(choices)}")
            args.append(f"model/{key}={value}")
        else:
            args.append(f"model.{key}={_override_value(value)}")
    cfg = compose(args)
    return build_model(cfg.model, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
