"""Typed schemas for every option of every config group, registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `run_schema` (the groups' containers), and every
option's YAML starts with its own schema (`defaults: [adam_schema, _self_]`): shared keys live in a
group's base dataclass, option-specific ones in its subclasses. So a misspelt key, a wrong type, or a
key that the chosen option never reads (`optimizer=adam optimizer.momentum=0.5`) fails at composition
with one line naming the key, the option and its keys, before anything is built.

Each schema also checks its own bounds and cross-key rules, in `__post_init__`: they run when a
config becomes these objects (`resexp.config.checked`, once per run, and for the Python API), so a
new key and its bounds are one edit here. The code that builds from a config reads its attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

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
# image folders and shards: how JPEGs are decoded; pil: in workers with PIL (evaluation = preprocess_image bit for
# bit), torchvision: in workers with decode_jpeg and tensor transforms, device: batched on the training device
Decode = choice("Decode", "pil", "torchvision", "device")
AugmentPolicy = choice("AugmentPolicy", "none", "trivialaugment", "randaugment")

# group -> schema name -> dataclass; an option's YAML names its schema as `<schema name>_schema`
SCHEMAS: dict[str, dict[str, type]] = {}
SELECTORS = {"model": "arch"}  # the key that picks a group's schema in a plain config (others: name)


def given(value: Any) -> bool:
    """A value the config sets (not MISSING, `???`, nor null)."""
    return value is not None and value != MISSING


def fail_unless(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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

    def __post_init__(self) -> None:
        from resexp.models.blocks import BLOCKS

        if given(self.name):
            BLOCKS.get(self.name)


@dataclass
class StagesConfig:
    depths: list[int] = MISSING  # residual units per stage
    widths: list[int] = MISSING  # bottleneck/inner width per stage; stem width = widths[0]
    strides: list[int] = MISSING  # stride of each stage

    def __post_init__(self) -> None:
        if not all(given(v) for v in (self.depths, self.widths, self.strides)):
            return
        depths, widths, strides = list(self.depths), list(self.widths), list(self.strides)
        fail_unless(len(depths) == len(widths) == len(strides) and depths,
                    f"model.stages: depths, widths and strides need one entry per stage "
                    f"(got {len(depths)}, {len(widths)}, {len(strides)})")
        for key, values in (("depths", depths), ("widths", widths), ("strides", strides)):
            fail_unless(all(v >= 1 for v in values), f"model.stages.{key}: every entry must be >= 1 (got {values})")


@dataclass
class ModelConfig:
    name: str = MISSING  # the network's name, as in conf/model/<name>.yaml
    arch: str = "resnet"  # a key of resexp.models.ARCHS: resnet, lenet5, vgg13 (picks the schema)
    num_classes: int | None = None  # None: taken from the data set
    in_channels: int | None = None  # None: taken from the data set
    pretrained: str | None = None  # torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) or a file
    drop_rate: float = 0.0  # dropout before the classifier

    def __post_init__(self) -> None:
        from resexp.models import ARCHS

        ARCHS.get(self.arch)
        fail_unless(0 <= self.drop_rate < 1, f"model.drop_rate must be in [0, 1) (got {self.drop_rate})")

    def check_image_size(self, image_size: int) -> None:
        """The data's image size against the network (RunConfig's cross-group rule)."""


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

    def __post_init__(self) -> None:
        from resexp.models.blocks import BLOCKS
        from resexp.models.stems import STEMS

        super().__post_init__()
        for key in ("block", "stages"):
            fail_unless(getattr(self, key) is not None,
                        f"model.{key} is required for arch resnet (e.g. model/{key}=...)")
        STEMS.get(self.stem)
        fail_unless(self.stride_position in ("first", "last"),
                    f"model.stride_position must be 'first' or 'last' (got '{self.stride_position}')")
        fail_unless(self.width > 0, f"model.width must be > 0 (got {self.width})")
        stages = len(self.stages.depths)
        fail_unless(len(self.dilation) <= stages - 1, f"model.dilation has one entry per stage after the first: at "
                                                      f"most {stages - 1} here (got {len(self.dilation)})")
        block = BLOCKS.get(self.block.name)
        zero_init = block.zero_init_default if self.zero_init_residual is None else self.zero_init_residual
        fail_unless(not zero_init or block.residual, "model.zero_init_residual=true needs a residual block: zeroing "
                                                     "the last layer of a plain block cuts the signal")

    def check_image_size(self, image_size: int) -> None:
        """The input against the network's downsampling: below twice the stem's stride the first stage
        already sees a 1x1 map, all image structure gone (the network still runs, on padding, and
        learns nothing from the layout)."""
        from resexp.models import stem_stride

        first = stem_stride(self.stem)
        dilated = list(self.dilation) + [False] * len(self.stages.strides)
        total = first
        for i, stride in enumerate(self.stages.strides):
            total *= 1 if i > 0 and dilated[i - 1] else stride
        other = ", or model.stem=cifar (no downsampling in the stem)" if self.stem != "cifar" else ""
        fail_unless(image_size >= 2 * first,
                    f"data.image_size={image_size} is too small for model={self.name}: its {self.stem} stem shrinks "
                    f"the map {first}x ({total}x in all), so it needs data.image_size >= {2 * first} ({total} or "
                    f"more keeps every stage above 1x1){other}")


@dataclass
class BaselineConfig(ModelConfig):  # the plain CNNs of resexp/models/baselines.py
    batch_norm: bool = False  # BN after every conv

    def check_image_size(self, image_size: int) -> None:
        from resexp.models.baselines import lenet5_side

        fail_unless(self.arch != "lenet5" or lenet5_side(image_size) >= 1,
                    f"lenet5 needs data.image_size >= 10 (got {image_size})")


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

    def __post_init__(self) -> None:
        fail_unless(self.crop_padding >= 0, f"data.augment.crop_padding={self.crop_padding} must be >= 0")
        fail_unless(0.0 <= self.random_erasing <= 1.0,
                    f"data.augment.random_erasing={self.random_erasing} must be a probability in [0, 1]")


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

    def __post_init__(self) -> None:
        if given(self.name):  # a missing name gets its own message from build_data
            from resexp.data import DATASETS

            DATASETS.get(self.name)
        fail_unless(0.0 <= self.val_split < 1.0, f"data.val_split={self.val_split} must be in [0, 1)")
        for key in ("batch_size", "image_size"):
            fail_unless(getattr(self, key) >= 1, f"data.{key}={getattr(self, key)} must be a positive integer")
        fail_unless(self.eval_batch_size is None or self.eval_batch_size >= 1,
                    f"data.eval_batch_size={self.eval_batch_size} must be a positive integer (or null)")
        fail_unless(self.num_workers >= 0, f"data.num_workers={self.num_workers} must be >= 0")
        fail_unless(self.channels in (None, 1, 3),
                    f"data.channels={self.channels} must be 1 (grayscale), 3 (RGB) or null (the set's own)")
        fail_unless(self.num_classes is None or self.num_classes >= 1,
                    f"data.num_classes={self.num_classes} must be a positive integer (or null)")
        fail_unless((self.mean is None) == (self.std is None),
                    "data.mean and data.std go together: set both (or neither, for pixels in [0, 1])")
        fail_unless(all(s > 0 for s in self.std or ()), f"data.std={list(self.std or ())} must be positive")


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

    def __post_init__(self) -> None:  # PyTorch would stop on these later, with a traceback
        from resexp.optim import OPTIMIZERS

        if given(self.name):
            OPTIMIZERS.get(self.name)
        fail_unless(self.lr >= 0, f"optimizer.lr={self.lr} must be >= 0 (e.g. 0.1 for sgd, 0.001 for adam)")
        fail_unless(self.weight_decay >= 0,
                    f"optimizer.weight_decay={self.weight_decay} must be >= 0 (e.g. 5e-4; 0 for none)")


@dataclass
class FusedOptimizerConfig(OptimizerConfig):  # torch's optimizers with fused CUDA and CPU kernels
    fused: bool | None = None  # None: fused kernels on CUDA and CPU, plain loop elsewhere (MPS)


@dataclass
class SGDConfig(FusedOptimizerConfig):
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        fail_unless(not self.nesterov or self.momentum > 0, "optimizer.nesterov=true needs optimizer.momentum > 0")


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

    def __post_init__(self) -> None:
        from resexp.optim import SCHEDULERS

        if given(self.name):
            SCHEDULERS.get(self.name)


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

    def __post_init__(self) -> None:
        super().__post_init__()
        fail_unless(self.step_size >= 1, f"scheduler.step_size must be >= 1, got {self.step_size}")


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
    # null: on for CPU (oneDNN's convolutions are 2-22% faster in it: benchmarks/RESULTS.md), off on CUDA;
    # a resumed run keeps the layout it was trained in
    channels_last: bool | None = None
    compile: bool = False
    compile_mode: CompileMode = CompileMode.default
    deterministic: bool = False
    grad_clip: float | None = None  # max gradient norm
    accumulate: int = 1  # gradient accumulation steps
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    ema_decay: float | None = None  # e.g. 0.999; validated and checkpointed next to the weights
    ema_warmup: bool = False  # decay min(ema_decay, 1 - (1 + step)^(-2/3)): short runs forget the random start
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

    def __post_init__(self) -> None:  # the closed choices (monitor, compile_mode, ...) are enums above
        fail_unless(self.accumulate >= 1 and self.val_every >= 1 and self.epochs >= 1,
                    "trainer.epochs, trainer.accumulate and trainer.val_every must be >= 1")
        fail_unless(self.ema_decay is None or 0 < self.ema_decay < 1,
                    f"trainer.ema_decay={self.ema_decay} must be between 0 and 1 (e.g. 0.999), or null for none")
        fail_unless(0 <= self.label_smoothing < 1,
                    f"trainer.label_smoothing={self.label_smoothing} must be in [0, 1) (e.g. 0.1; 0 for none)")
        fail_unless(self.checkpoint_every_n_steps is None or self.checkpoint_every_n_steps >= 1,
                    f"trainer.checkpoint_every_n_steps={self.checkpoint_every_n_steps} must be >= 1 "
                    "(optimizer steps between saves of last.pt), or null for epoch ends only")
        fail_unless(self.grad_clip is None or self.grad_clip > 0,
                    f"trainer.grad_clip={self.grad_clip} must be > 0 (a maximum gradient norm, e.g. 1.0), "
                    "or null for no clipping")


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

    def __post_init__(self) -> None:  # rules across groups
        if isinstance(self.model, ModelConfig) and isinstance(self.data, DataConfig):
            self.model.check_image_size(self.data.image_size)


ConfigStore.instance().store(name="run_schema", node=RunConfig)
