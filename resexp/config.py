"""Typed schemas for every config group, registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `run_schema`, so every YAML file and
command-line override is merged into these dataclasses: a misspelt key or a wrong type fails
at composition time with the full key in the message, before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


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
    arch: str = "resnet"  # a key of resexp.models.ARCHS: resnet, lenet5, vgg13
    block: BlockConfig | None = None
    stages: StagesConfig | None = None
    stem: str = "imagenet"  # a key of resexp.models.stems.STEMS
    stride_position: str = "first"  # first | last (Keras v2 puts the stride on a stack's last unit)
    width: float = 1.0  # multiplier on every stage width (and the stem)
    num_classes: int | None = None  # None: taken from the data set
    in_channels: int | None = None  # None: taken from the data set
    zero_init_residual: bool | None = None  # None: the block's default (on for v1, off otherwise)
    dilation: list[bool] = field(default_factory=list)  # per stage after the first: dilate, not stride
    batch_norm: bool = False  # baselines only (lenet5): BN after convs
    pretrained: str | None = None  # torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) or a file
    drop_rate: float = 0.0  # dropout before the classifier


@dataclass
class AugmentConfig:
    crop_padding: int = 0  # random crop of image_size after padding by this many pixels; 0 = off
    flip: bool = False  # random horizontal flip
    random_resized_crop: bool = False  # streaming sets: RandomResizedCrop instead of Resize
    policy: str = "none"  # none | trivialaugment | randaugment
    random_erasing: float = 0.0  # probability


@dataclass
class DataConfig:
    name: str = MISSING  # a key of resexp.data.DATASETS
    root: str | None = None
    download: bool = True
    image_size: int = 32
    channels: int | None = None  # None: the data set's own (1 for digits/MNIST, 3 for images)
    num_classes: int | None = None  # synthetic: how many; others: read from the data
    num_samples: int = 2048  # synthetic only
    batch_size: int = 128
    eval_batch_size: int | None = None  # None: 2 x batch_size
    num_workers: int = 2
    val_split: float = 0.2  # fraction held out when the set has no validation split
    on_bad_file: str = "error"  # error | skip
    loader: str = "auto"  # auto | memory | stream
    shuffle: bool = True
    mean: list[float] | None = None  # None: no normalisation beyond [0, 1]
    std: list[float] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimizerConfig:
    name: str = MISSING  # a key of resexp.optim.OPTIMIZERS
    lr: float = 0.1
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    no_decay_norm_bias: bool = False  # exclude BN and bias parameters from weight decay
    fused: bool | None = None  # None: fused kernels on CUDA, plain loop elsewhere
    scale_lr_batch: int | None = None  # lr is given for this batch size; scale linearly to the real one


@dataclass
class SchedulerConfig:
    name: str = MISSING  # a key of resexp.optim.SCHEDULERS
    warmup_epochs: float = 0.0
    warmup_start: float = 0.1  # lr factor at the start of the warm-up
    min_lr_factor: float = 0.0  # cosine floor, as a fraction of lr
    step_size: int = 30  # step: epochs between decays
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    pct_start: float = 0.25  # onecycle
    div_factor: float = 25.0  # onecycle
    final_div_factor: float = 1e4  # onecycle


@dataclass
class TrainerConfig:
    epochs: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "32"  # 32 | bf16 | 16
    channels_last: bool = False
    compile: bool = False
    # torch.compile mode: default | reduce-overhead (CUDA graphs for the training step) | max-autotune |
    # max-autotune-no-cudagraphs. Evaluation never uses CUDA graphs (it keeps outputs across calls).
    compile_mode: str = "default"
    deterministic: bool = False
    grad_clip: float | None = None  # max gradient norm
    accumulate: int = 1  # gradient accumulation steps
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    ema_decay: float | None = None  # e.g. 0.999; validated and checkpointed next to the weights
    val_every: int = 1  # epochs
    monitor: str = "val_acc"  # val_acc | val_loss
    early_stopping_patience: int | None = None  # validations without improvement before stopping
    log_every_n_steps: int = 50
    limit_train_batches: int | None = None  # for quick runs and tests
    limit_val_batches: int | None = None
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    resume: str | None = None  # a run directory, a checkpoint file, or "auto"
    finetune_from: str | None = None  # checkpoint whose backbone (all but the classifier) is loaded
    sync_batchnorm: bool = False  # DDP only
    tta_flip: bool = False  # evaluation averages the logits of the image and its mirror
    report: bool = True  # after the run: curves, confusion matrix, predictions, summary, safetensors


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    trainer: TrainerConfig = MISSING
    seed: int = 0


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


register_schemas()


def conf_dir() -> Path:
    """The config tree: inside the installed package, or the checkout's top-level conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"resexp's conf/ directory is missing (looked in {here} and {here.parent})")


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """Compose the run config as the command line would (Python API; works inside a Hydra app too)."""
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


def to_plain(cfg: Any) -> dict:
    """A resolved config as plain Python values (what checkpoints and JSON files store)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
