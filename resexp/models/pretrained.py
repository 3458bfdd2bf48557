"""Weights from elsewhere into a model: `model.pretrained` (torchvision weights by name, or a local
state-dict file) and `trainer.finetune_from` (a checkpoint file) load by the one rule of `load_backbone`.

A name (DEFAULT, IMAGENET1K_V1, ...) is resolved with torchvision's weights API for the network's
torchvision twin (same name, arch resnet) and downloaded into torch.hub's cache. A file is read
with `torch.load(weights_only=True)` (or safetensors): a raw state dict or a checkpoint holding
one under `model`. Classifier weights whose shape does not fit num_classes are left out, so the
model keeps a fresh classifier on top of the pretrained backbone; any other tensor that is missing,
unexpected or of another shape is an error that names it.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from resexp.errors import CheckpointError, ConfigError, ResexpError

FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")


def is_file_spec(spec: str) -> bool:
    """A path (has a separator or a weights-file suffix) rather than a torchvision weights name."""
    return "/" in spec or "\\" in spec or spec.lower().endswith(FILE_SUFFIXES)


def pretrained_state_dict(spec: str, name: str, arch: str = "resnet") -> dict[str, torch.Tensor]:
    """The state dict `spec` names: a file, or torchvision weights for network `name`."""
    return read_state_dict(spec) if is_file_spec(spec) else fetch_torchvision(torchvision_weights(name, arch, spec))


def load_pretrained(model: nn.Module, spec: str, name: str, arch: str = "resnet") -> None:
    """Load `spec` (a file or a torchvision weights name for network `name`) into `model` in place."""
    load_backbone(model, pretrained_state_dict(spec, name, arch), f"model.pretrained={spec}")


def check_pretrained(spec: str, name: str, arch: str = "resnet") -> None:
    """`spec` checked without reading or downloading anything: the file exists, or torchvision has
    weights of that name for network `name`."""
    if is_file_spec(spec):
        existing_file(spec)
    else:
        torchvision_weights(name, arch, spec)


def existing_file(path: str | Path, option: str = "model.pretrained") -> Path:
    """`path` as an existing file, or an error naming the option that gave it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"{option}: no such file: {path}")
    return p


def torchvision_weights(name: str, arch: str, spec: str):
    """The torchvision weights enum member called `spec` for network `name`."""
    from torchvision import models

    if arch != "resnet" or name not in models.list_models(module=models):
        twins = ", ".join(n for n in models.list_models(module=models) if n.startswith("resnet"))
        raise ConfigError(f"model.pretrained={spec}: '{name}' has no torchvision twin, so there are no "
                          f"named weights for it (named weights exist for {twins}); pass a local "
                          f".pt/.pth/.safetensors file instead")
    enum = models.get_model_weights(name)
    key = spec.rsplit(".", 1)[-1]  # accept "ResNet50_Weights.IMAGENET1K_V2" as well
    if key not in enum.__members__:
        raise ConfigError(f"model.pretrained: unknown weights '{spec}' for {name}; choose one of: "
                          f"{', '.join(enum.__members__)}, or a path to a weights file")
    return enum[key]


def fetch_torchvision(weights) -> dict[str, torch.Tensor]:
    """The weights' state dict from torch.hub's cache, downloading it if needed; a one-line error
    (instead of a long urllib traceback or a hang) when it cannot be fetched."""
    url = weights.url
    filename = Path(urlparse(url).path).name
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        if not (cache / filename).is_file():
            # urllib has no timeout of its own: probe the host first so a dead network fails fast.
            host = urlparse(url).hostname or ""
            socket.create_connection((host, 443), timeout=10).close()
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ResexpError(f"could not fetch torchvision weights {weights} from {url} ({reason}); download "
                          f"that file elsewhere and pass model.pretrained=/path/to/{filename} (or copy it "
                          f"into {cache})") from err


def read_state_dict(path: str | Path, option: str = "model.pretrained") -> dict[str, torch.Tensor]:
    """The state dict in a weights file or under a checkpoint's `model`; errors name `option`."""
    from resexp.train.checkpoint import read  # here: resexp.train imports the models

    p = existing_file(path, option)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(p)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own types
            reason = "empty file (0 bytes)" if p.stat().st_size == 0 else " ".join(str(err).split())[:200]
            raise CheckpointError(f"{option}: cannot read {path} as safetensors ({reason})") from None
    else:
        try:
            state = read(p)
        except CheckpointError as err:
            raise CheckpointError(f"{option}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a resexp checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{option}: {path} holds no state dict (a name -> tensor mapping, "
                              "or a checkpoint with one under 'model')")
    return state


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load `state` strictly, except for a classifier whose shape differs (other class count);
    returns the names of the tensors left freshly initialised (that classifier's)."""
    # Wrappers add prefixes: DistributedDataParallel "module.", torch.compile "_orig_mod.".
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    _adapt_first_conv(model, state, own)
    classifier = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    fresh = {k for k in own if k.startswith(classifier + ".") and k in state and state[k].shape != own[k].shape}
    state = {k: v for k, v in state.items() if k not in fresh}
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    missing = sorted(set(own) - set(state) - fresh)
    unexpected = sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("shape mismatch", wrong), ("missing", missing), ("unexpected", unexpected))
                 if keys]
        raise CheckpointError(f"{source}: the weights do not fit this model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)  # only the fresh classifier keys are absent
    return sorted(fresh)


def _adapt_first_conv(model: nn.Module, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    # RGB weights on a 1-channel input: sum the filters over colour, which is what they compute
    # on a grey image replicated to 3 channels (timm's adapt_input_conv does the same).
    key = next(k for k, v in own.items() if v.dim() == 4)
    if key in state and state[key].dim() == 4 and state[key].shape[1] == 3 and own[key].shape[1] == 1:
        state[key] = state[key].sum(dim=1, keepdim=True)
