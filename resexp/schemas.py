"""Typed schemas for every option of every config group, registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `run_schema` (the groups' containers), and every
option's YAML starts with its own schema (`defaults: [adam_schema, _self_]`): shared keys live in a
group's base dataclass, option-specific ones in its subclasses. So a misspelt key, a wrong type, or a
key that the chosen option never reads (`optimizer=adam optimizer.momentum=0.5`) fails at composition
with one line naming the key, the option and its keys, before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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
# image folders and shards: how JPEGs are decoded; pil: in workers with PIL (evaluation = preprocess_image bit for
# bit), torchvision: in workers with decode_jpeg and tensor transforms, device: batched on the training device
Decode = choice("Decode", "pil", "torchvision", "device")
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
    decode: Decode = Decode.torchvision


@dataclass
class ShardsConfig(DataConfig):
    root: str | None = None  # a folder written by `python -m resexp.pack` (required)
    decode: Decode = Decode.torchvision


register_schema("data", DataConfig, "digits")
register_schema("data", SyntheticDataConfig, "synthetic")
register_schema("data", DownloadedDataConfig, "cifar10", "cifar100", "mnist", "fashion_mnist")
register_schema("data", ImageFolderConfig, "image_folder", "birds")
register_schema("data", ShardsConfig, "shards")


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
    checkpoint_every_n_steps: int | None = None  # also save last.pt every N optimizer steps (long epochs)
    limit_train_batches: int | None = None  # for quick runs and tests
    limit_val_batches: int | None = None
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    resume: str | None = None  # a run directory, a checkpoint file, or "auto"
    finetune_from: str | None = None  # checkpoint whose backbone (all but the classifier) is loaded
    sync_batchnorm: bool = False  # DDP only
    tta_flip: bool = False  # evaluation averages the logits of the image and its mirror
    report: bool = True  # after the run: curves, confusion matrix, predictions, summary, safetensors


# ------------------------------------------------------------------------------------------- logger
# Each option of conf/logger/ fills its own section (logger.mlflow.tracking_uri), so several can be
# chosen at once (logger=[tensorboard,mlflow]); a section left null is a tracker not chosen.
@dataclass
class TensorBoardConfig:  # events in <run dir>/tb/
    pass


@dataclass
class MLflowConfig:
    tracking_uri: str | None = None  # None: SQLite at outputs/mlflow.db, artifacts in outputs/mlartifacts/
    experiment: str = "resexp"


@dataclass
class WandbConfig:
    project: str = "resexp"
    entity: str | None = None
    mode: str = "offline"  # offline (upload later with `wandb sync`), online or disabled


@dataclass
class LoggerConfig:
    tensorboard: TensorBoardConfig | None = None
    mlflow: MLflowConfig | None = None
    wandb: WandbConfig | None = None


@dataclass
class RunConfig:  # the groups' containers; each option's own schema fills them in
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0


ConfigStore.instance().store(name="run_schema", node=RunConfig)
