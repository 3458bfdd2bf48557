"""Typed schemas for every option of every config group, registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `run_schema` (the groups' containers), and every
option's YAML starts with its own schema (`defaults: [adam_schema, _self_]`): shared keys live in a
group's base dataclass, option-specific ones in its subclasses. So a misspelt key, a wrong type, or a
key that the chosen option never reads (`optimizer=adam optimizer.momentum=0.5`) fails at composition
with one line naming the key, the option and its keys, before anything is built.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from hydra.core.default_element import GroupDefault
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from resexp.errors import ConfigError


class Choice(str, Enum):
    """A closed set of identifiers. YAML and the command line give the plain string (checked at
    composition); a member compares and hashes equal to its string, and `to_plain` writes it back as one."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def _missing_(cls, value: object) -> Choice | None:
        return cls._value2member_map_.get(str(value))  # the command line reads precision=16 as a number


def choice(name: str, *values: str) -> Any:
    return Choice(name, {v: v for v in values})  # members named by their values: "reduce-overhead", "32"


Precision = choice("Precision", "32", "bf16", "16")
# torch.compile mode; reduce-overhead = CUDA graphs for the training step. Evaluation never uses CUDA
# graphs (it keeps outputs across calls).
CompileMode = choice("CompileMode", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
Monitor = choice("Monitor", "val_acc", "val_loss")
StridePosition = choice("StridePosition", "first", "last")  # last: Keras v2, the stride on a stack's last unit
Loader = choice("Loader", "auto", "memory", "stream")
OnBadFile = choice("OnBadFile", "error", "skip")
AugmentPolicy = choice("AugmentPolicy", "none", "trivialaugment", "randaugment")

# group -> schema name -> dataclass; an option's YAML names its schema as `<schema name>_schema`
SCHEMAS: dict[str, dict[str, type]] = {}
SELECTORS = {"model": "arch"}  # the key that picks a group's schema in a plain config (others: name)


def register_schema(group: str, cls: type, *names: str) -> type:
    """Store `cls` as `<group>/<name>_schema` for each name (an option, or for models an arch)."""
    for name in names:
        SCHEMAS.setdefault(group, {})[name] = cls
        ConfigStore.instance().store(group=group, name=f"{name}_schema", node=cls)
    return cls


# -------------------------------------------------------------------------------------------- model
@dataclass
class BlockConfig:
    name: str = MISSING  # a key of resexp.models.blocks.BLOCKS


@dataclass
class StagesConfig:
    depths: list[int] = MISSING  # residual units per stage
    widths: list[int] = MISSING  # bottleneck/inner width per stage; stem width = widths[0]
    strides: list[int] = MISSING  # stride of each stage


@dataclass
class ModelConfig:
    name: str = MISSING  # the network's name, as in conf/model/<name>.yaml
    arch: str = "resnet"  # a key of resexp.models.ARCHS: resnet, lenet5, vgg13 (picks the schema)
    num_classes: int | None = None  # None: taken from the data set
    in_channels: int | None = None  # None: taken from the data set
    pretrained: str | None = None  # torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) or a file
    drop_rate: float = 0.0  # dropout before the classifier


@dataclass
class ResNetConfig(ModelConfig):
    block: BlockConfig | None = None
    stages: StagesConfig | None = None
    stem: str = "imagenet"  # a key of resexp.models.stems.STEMS
    stride_position: StridePosition = StridePosition.first
    width: float = 1.0  # multiplier on every stage width (and the stem)
    # Zero each residual branch's last BN (v1) or conv (v2) at init, so units start as their shortcuts
    # (Goyal et al. 2017). None: the block's default, on for v1 and off otherwise; conf/model/resnet20.yaml
    # turns it off (measured: benchmarks/RESULTS.md, "Zero-initialised residual branches").
    zero_init_residual: bool | None = None
    dilation: list[bool] = field(default_factory=list)  # per stage after the first: dilate, not stride


@dataclass
class BaselineConfig(ModelConfig):  # the plain CNNs of resexp/models/baselines.py
    batch_norm: bool = False  # BN after every conv


register_schema("model", ResNetConfig, "resnet")
register_schema("model", BaselineConfig, "lenet5", "vgg13")


# --------------------------------------------------------------------------------------------- data
@dataclass
class AugmentConfig:
    crop_padding: int = 0  # random crop of image_size after padding by this many pixels; 0 = off
    flip: bool = False  # random horizontal flip
    random_resized_crop: bool = False  # streaming sets: RandomResizedCrop instead of Resize
    policy: AugmentPolicy = AugmentPolicy.none
    random_erasing: float = 0.0  # probability


@dataclass
class DataConfig:
    name: str = MISSING  # a key of resexp.data.DATASETS
    image_size: int = 32
    channels: int | None = None  # None: the data set's own (1 for digits/MNIST, 3 for images)
    num_classes: int | None = None  # synthetic: how many; others: checked against the data
    batch_size: int = 128
    eval_batch_size: int | None = None  # None: 2 x batch_size
    num_workers: int = 2  # data.loader=stream only
    val_split: float = 0.2  # fraction held out when the set has no validation split
    loader: Loader = Loader.auto
    shuffle: bool = True
    mean: list[float] | None = None  # None: no normalisation beyond [0, 1]
    std: list[float] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class SyntheticDataConfig(DataConfig):
    num_samples: int = 2048


@dataclass
class DownloadedDataConfig(DataConfig):  # torchvision's sets: files under root, fetched if absent
    root: str | None = None  # None: $RESEXP_DATA or ~/.cache/resexp/data
    download: bool = True


@dataclass
class ImageFolderConfig(DataConfig):
    root: str | None = None  # <root>/<class>/<image> (required)
    on_bad_file: OnBadFile = OnBadFile.error


register_schema("data", DataConfig, "digits")
register_schema("data", SyntheticDataConfig, "synthetic")
register_schema("data", DownloadedDataConfig, "cifar10", "cifar100", "mnist", "fashion_mnist")
register_schema("data", ImageFolderConfig, "image_folder", "birds")


# ---------------------------------------------------------------------------------------- optimizer
@dataclass
class OptimizerConfig:
    name: str = MISSING  # a key of resexp.optim.OPTIMIZERS
    lr: float = 0.1
    weight_decay: float = 0.0
    no_decay_norm_bias: bool = False  # exclude BN and bias parameters from weight decay
    scale_lr_batch: int | None = None  # lr is given for this batch size; scale linearly to the real one


@dataclass
class FusedOptimizerConfig(OptimizerConfig):  # torch's optimizers with a fused CUDA kernel
    fused: bool | None = None  # None: fused kernels on CUDA, plain loop elsewhere


@dataclass
class SGDConfig(FusedOptimizerConfig):
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class AdamConfig(FusedOptimizerConfig):  # Adam and AdamW
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


register_schema("optimizer", SGDConfig, "sgd")
register_schema("optimizer", AdamConfig, "adam", "adamw")


# ---------------------------------------------------------------------------------------- scheduler
@dataclass
class SchedulerConfig:
    name: str = MISSING  # a key of resexp.optim.SCHEDULERS


@dataclass
class WarmupConfig(SchedulerConfig):  # the epoch rules of resexp/optim.py (epoch_rule)
    warmup_epochs: float = 0.0
    warmup_start: float = 0.1  # lr factor at the start of the warm-up


@dataclass
class CosineConfig(WarmupConfig):
    min_lr_factor: float = 0.0  # the floor, as a fraction of lr


@dataclass
class StepConfig(WarmupConfig):
    step_size: int = 30  # epochs between decays
    gamma: float = 0.1


@dataclass
class MultiStepConfig(WarmupConfig):
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class OneCycleConfig(SchedulerConfig):  # OneCycleLR has its own warm-up (pct_start)
    pct_start: float = 0.25
    div_factor: float = 25.0
    final_div_factor: float = 1e4


register_schema("scheduler", WarmupConfig, "constant", "inverse_epoch")
register_schema("scheduler", CosineConfig, "cosine")
register_schema("scheduler", StepConfig, "step")
register_schema("scheduler", MultiStepConfig, "multistep")
register_schema("scheduler", OneCycleConfig, "onecycle")


# ------------------------------------------------------------------------------------------ trainer
@dataclass
class TrainerConfig:
    epochs: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = Precision["32"]
    channels_last: bool = False
    compile: bool = False
    compile_mode: CompileMode = CompileMode.default
    deterministic: bool = False
    grad_clip: float | None = None  # max gradient norm
    accumulate: int = 1  # gradient accumulation steps
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    ema_decay: float | None = None  # e.g. 0.999; validated and checkpointed next to the weights
    val_every: int = 1  # epochs
    monitor: Monitor = Monitor.val_acc
    early_stopping_patience: int | None = None  # validations without improvement before stopping
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int | None = None  # optimizer steps between last.pt saves inside an epoch
    limit_train_batches: int | None = None  # for quick runs and tests
    limit_val_batches: int | None = None
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    resume: str | None = None  # a run directory, a checkpoint file, or "auto"
    finetune_from: str | None = None  # checkpoint whose backbone (all but the classifier) is loaded
    sync_batchnorm: bool = False  # DDP only
    tta_flip: bool = False  # evaluation averages the logits of the image and its mirror
    report: bool = True  # after the run: curves, confusion matrix, predictions, summary, safetensors


@dataclass
class RunConfig:  # the groups' containers; each option's own schema fills them in
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    trainer: TrainerConfig = MISSING
    seed: int = 0


ConfigStore.instance().store(name="run_schema", node=RunConfig)


# ------------------------------------------------------------------------------ plain configs
def schema_of(group: str, node: Mapping) -> type:
    """The schema of one group's config given as a plain mapping (a saved config, the Python API):
    picked by its name (models: its arch); the group's base schema for a name without one."""
    base = get_type_hints(RunConfig)[group]
    key = SELECTORS.get(group, "name")
    return SCHEMAS.get(group, {}).get(node.get(key, getattr(base, key, None)), base)


def typed(group: str, node: Mapping) -> DictConfig:
    """`node` checked against its schema: defaults filled in, types and keys checked."""
    schema = schema_of(group, node)
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as e:
        selector = SELECTORS.get(group, "name")
        value = node.get(selector, getattr(schema, selector, None))
        if value not in SCHEMAS.get(group, {}):  # the name is the mistake, not the keys
            known = ", ".join(SCHEMAS[group])
            raise ConfigError(f"unknown {group}.{selector} '{value}'; choose one of: {known}") from None
        raise ConfigError(one_line(e, prefix=f"{group}.", owner=f"{group} {selector}={value}")) from None


def known_keys(group: str, node: Mapping) -> dict:
    """`node` without the keys its option's schema lacks."""
    keys = {f.name for f in fields(schema_of(group, node))}
    return {k: v for k, v in node.items() if k in keys}


def saved_config(config: Mapping) -> dict:
    """A run's saved config, read leniently: runs saved before each option had its own schema hold
    every key of the group's old shared one (an adam run has `momentum`). Those keys are dropped, so
    old runs still resume, evaluate, predict and fine-tune."""
    return {k: known_keys(k, v) if k in SCHEMAS and isinstance(v, Mapping) else v for k, v in config.items()}


def to_plain(cfg: Any) -> dict:
    """A resolved config as plain Python values (what checkpoints and JSON files store): enums as strings."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def conf_dir() -> Path:
    """The config tree: inside the installed package, or the checkout's top-level conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"resexp's conf/ directory is missing (looked in {here} and {here.parent})")


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """Compose the run config as the command line would (Python API; works inside a Hydra app too).
    A bad key or value raises ConfigError with the command line's one-line message."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


# ------------------------------------------------------------------------------- composition
# Hydra has no public hook into composition, so two methods of its config loader are wrapped (at
# import, so that launcher worker processes, which import resexp to unpickle the task, get them too):
# - _compose_config_from_defaults_list: drops the keys a preset set for an option it chose and the
#   command line replaced (`experiment=r6_mnist_lenet5_tuned optimizer=adam`: the preset's sgd keys
#   momentum/nesterov go with sgd). A key typed on the command line is still checked strictly.
# - load_configuration: every composition error becomes a one-line ConfigError.
from hydra._internal.config_loader_impl import ConfigLoaderImpl  # noqa: E402

_hydra_compose = ConfigLoaderImpl._compose_config_from_defaults_list
_hydra_load = ConfigLoaderImpl.load_configuration
_choices: dict[str, str] = {}  # package -> option of the latest composition, for the error message
_report: list[Callable[[ConfigError], None]] = []  # set by report_errors()


def _compose_config_from_defaults_list(self, defaults, repo):
    chosen, schemas = {}, {}
    for d in defaults:
        group, _, option = (d.config_path or "").rpartition("/")
        if d.package != group.replace("/", "."):
            continue
        if option.endswith("_schema") and group in SCHEMAS:
            schemas[group] = SCHEMAS[group].get(option.removesuffix("_schema"))
        elif not option.endswith("_schema"):
            chosen[d.package] = option
    _choices.clear()
    _choices.update(chosen)
    load = self._load_single_config

    def load_without_replaced(default, repo):
        loaded = load(default=default, repo=repo)
        preset = {d.group.lstrip("/"): d.value for d in loaded.defaults_list or () if isinstance(d, GroupDefault)}
        replaced = [g for g, option in preset.items() if schemas.get(g) and chosen.get(g) != option
                    and isinstance(loaded.config.get(g), DictConfig)]
        if replaced:
            loaded = copy.deepcopy(loaded)  # the repository caches what it loaded
            for group in replaced:
                keys = {f.name for f in fields(schemas[group])}
                node = loaded.config[group]
                for key in [k for k in node if k not in keys]:
                    del node[key]
        return loaded

    self._load_single_config = load_without_replaced
    try:
        return _hydra_compose(self, defaults, repo)
    finally:
        del self._load_single_config


class CompositionError(ConfigError, ConfigCompositionException):
    """A composition error in one line; still a ConfigCompositionException for Hydra's own callers."""


def _load_configuration(self, *args, **kwargs):
    try:
        return _hydra_load(self, *args, **kwargs)
    except (ConfigCompositionException, OmegaConfBaseException) as e:
        error = CompositionError(one_line(e))
        error.__cause__ = e  # before reporting: HYDRA_FULL_ERROR=1 shows Hydra's own error below the line
        for report in _report:
            report(error)
        raise error from e


ConfigLoaderImpl._compose_config_from_defaults_list = _compose_config_from_defaults_list
ConfigLoaderImpl.load_configuration = _load_configuration


@contextmanager
def report_errors(report: Callable[[ConfigError], None]) -> Iterator[None]:
    """Within: a composition error goes to `report` (the CLI: one line, exit 2) where it is raised,
    since the Hydra app around it would catch it and print its own multi-line message instead."""
    if {"-sc", "--shell-completion"} & {a.split("=")[0] for a in sys.argv}:
        yield  # completing a partial command line: Hydra expects the errors, and ignores them
        return
    _report.append(report)
    try:
        yield
    finally:
        _report.remove(report)


def one_line(e: BaseException, prefix: str = "", owner: str | None = None) -> str:
    """A composition error as one line that names the key (and for an unknown key, the valid ones).
    `prefix`, `owner`: for a group's node checked on its own (`typed`)."""
    text = str(e)
    where = re.match(r"In '([^']+)'", text)
    origin = f" (set in {where[1]})" if where else ""
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key and \
            isinstance(cause.object_type, type) and hasattr(cause.object_type, "__dataclass_fields__"):
        path = cause.full_key.rpartition(".")[0]
        if owner is None or path:
            owner = f"{path.replace('.', '/')}={_choices[path]}" if path in _choices else prefix + path
        keys = ", ".join(f.name for f in fields(cause.object_type))
        return f"{prefix}{cause.full_key} is not a key of {owner} (its keys: {keys}){origin}"
    if cause is not None and cause.full_key:
        hint = get_type_hints(cause.object_type).get(str(cause.key)) if hasattr(
            cause.object_type, "__dataclass_fields__") else None
        if isinstance(hint, type) and issubclass(hint, Choice):
            return f"{prefix}{cause.full_key}={cause.value} is not one of: {', '.join(hint._value2member_map_)}{origin}"
        return f"{prefix}{cause.full_key}: {str(cause.msg).splitlines()[0]}{origin}"
    if isinstance(e, MissingConfigException) and e.options:
        first = re.sub(r"^In '[^']*': ", "", text.splitlines()[0])
        return f"{first}; choose one of: {', '.join(o for o in e.options if not o.endswith('_schema'))}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
