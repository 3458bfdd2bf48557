"""Networks from configs: `build_model(cfg.model, ...)`, and the Python API `create(name, ...)`
(`model_config(name, ...)` for the config object alone).

`model.arch` picks a builder from ARCHS; ResNets take their block, stages and stem by registered
name (BLOCKS, STEMS). Every network has a YAML file in conf/model/; `list_models()` lists them.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from resexp.config import check, checked, compose, composition_message, conf_dir, schema_of, to_plain, typed
from resexp.errors import ConfigError
from resexp.models.baselines import VGG13, LeNet5
from resexp.models.blocks import BLOCKS
from resexp.models.layer_table import count_buffers, count_params, model_summary, summary_text
from resexp.models.pretrained import load_backbone, load_pretrained, pretrained_state_dict
from resexp.models.resnet import ResNet
from resexp.models.stems import STEMS
from resexp.registry import Registry
from resexp.schemas import ModelConfig

__all__ = ["ARCHS", "BLOCKS", "STEMS", "LeNet5", "ResNet", "VGG13", "build_model", "count_buffers",
           "count_params", "create", "list_models", "load_pretrained", "model_config", "model_summary",
           "summary_text"]

# builder(cfg, num_classes, in_channels, image_size) -> nn.Module
ARCHS: Registry[Any] = Registry("arch")


@ARCHS.register("resnet")
def _resnet(cfg: DictConfig, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
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
    """The model config typed and checked by its arch's schema (resexp/schemas.py)."""
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is schema_of("model", cfg):
        return check(cfg)
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return OmegaConf.structured(cfg)  # an object of a schema checked itself when it was made
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


def list_models() -> list[str]:
    """The network names `model=<name>` and create() accept: conf/model/*.yaml."""
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def create(name: str, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
           **kwargs: Any) -> nn.Module:
    """Build conf/model/<name>.yaml with `kwargs` set on it, as `model=<name> model.<key>=<value>`
    would: `create("resnet50", num_classes=10, block="preact_bottleneck", stem="cifar", drop_rate=0.2)`
    (`block=` and `stages=` name files of conf/model/block/ and conf/model/stages/)."""
    cfg = model_config(name, **kwargs)
    return build_model(cfg, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def model_config(name: str, **kwargs: Any) -> ModelConfig:
    """conf/model/<name>.yaml as its schema's object (ResNetConfig, ...) with `kwargs` set, checked as
    the command line's values are."""
    if name not in list_models():
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    values = {}
    for key, value in kwargs.items():
        if key in ("block", "stages") and isinstance(value, str):
            choices = sorted(p.stem for p in (conf_dir() / "model" / key).glob("*.yaml"))
            if value not in choices:
                raise ConfigError(f"unknown model/{key} '{value}'; choose one of: {', '.join(choices)}")
            value = OmegaConf.to_container(OmegaConf.load(conf_dir() / "model" / key / f"{value}.yaml"))
        values[key] = value
    option = _option(conf_dir(), name)
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema_of("model", option)), option, values)
    except OmegaConfBaseException as e:
        raise ConfigError(composition_message(e, prefix="model.", owner=f"model={name}")) from None
    return checked(node)


@cache
def _option(conf: Path, name: str) -> dict:
    """The `model` node conf/model/<name>.yaml composes to (its defaults list: block, stages, a base)."""
    return to_plain(compose([f"model={name}"]).model)
