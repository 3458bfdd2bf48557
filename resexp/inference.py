"""A finished run loaded for inference (`resexp.predict`, `resexp.evaluate`, `resexp.export`): its best
model with the run's own preprocessing and class names.

    from resexp.inference import load_run
    run = load_run("outputs/2025-01-01/12-00-00-000000", device="cpu")
    probs = run.predict_files(["bird.jpg"])[0]         # Tensor[num_classes]
    print(run.class_names[int(probs.argmax())])

Checkpoints are read with `torch.load(weights_only=True)` (resexp.train.checkpoint.load): no pickled
code runs. `load_exported(run_dir)` rebuilds the same network from `best.safetensors` + `model.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from resexp.config import known_keys, overridden, saved_config
from resexp.errors import CheckpointError, DataError, error_line
from resexp.records.facts import RunFacts
from resexp.run_dir import RunPaths


# ------------------------------------------------------------------------------ the run's model
@dataclass
class LoadedRun:
    """A run's best model, in eval mode on `device`, with what it needs to read images."""

    run_dir: Path | None
    checkpoint: Path
    model: nn.Module
    config: dict  # the run's resolved config, as best.pt stores it
    facts: RunFacts  # best.pt's `meta`: name, num_classes, in_channels, image_size, class_names, mean, std, params
    best: dict  # the best epoch's metrics as recorded in best.pt
    device: torch.device
    data_cfg: DictConfig = field(repr=False, default=None)  # the run's data config (DataConfig-typed)

    @property
    def class_names(self) -> list[str]:
        return self.facts.labels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.facts.input_shape

    @property
    def tta_flip(self) -> bool:
        """The run evaluated with flip TTA: its predictions are made the same way."""
        return bool(self.config.get("trainer", {}).get("tta_flip", False))

    def preprocess(self, path: str | Path) -> torch.Tensor:
        """One image file -> the float [C, H, W] tensor the model saw at evaluation time."""
        return load_image(path, self.data_cfg, self.input_shape)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities [N, num_classes] for a preprocessed batch [N, C, H, W]."""
        from resexp.train.evaluation import flip_tta

        return flip_tta(self.model, images.to(self.device), self.tta_flip).float().softmax(1).cpu()

    def predict_files(self, paths: Sequence[str | Path]) -> torch.Tensor:
        return self.predict(torch.stack([self.preprocess(p) for p in paths]))


def find_checkpoint(run: str | Path) -> tuple[Path | None, Path]:
    """(run directory, best.pt) for a run directory, a sweep job directory or a .pt file."""
    p = Path(run).expanduser()
    if p.is_file():
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
        return run_dir, p
    if not p.exists():
        raise CheckpointError(f"run directory not found: {p}")
    if not p.is_dir():
        raise CheckpointError(f"run={p} is neither a run directory nor a checkpoint file")
    paths = RunPaths(p)
    best = paths.best
    if not best.is_file():
        hint = " (the run has not finished a validation yet?)" if paths.checkpoints.is_dir() else \
            " (is this a run directory? it should hold checkpoints/best.pt, metrics.json and .hydra/)"
        raise CheckpointError(f"no checkpoint at {best}{hint}")
    return p, best


def _saved_config(state: dict, run_dir: Path | None, ckpt: Path) -> dict:
    """The run's config: best.pt's copy, or the run directory's .hydra/config.yaml."""
    config = state.get("config")
    if isinstance(config, dict) and config.get("model") and config.get("data"):
        return saved_config(config)
    if run_dir is not None and RunPaths(run_dir).config.is_file():
        return saved_config(OmegaConf.to_container(OmegaConf.load(RunPaths(run_dir).config), resolve=True))
    raise CheckpointError(f"{ckpt} holds no run config and there is no .hydra/config.yaml next to it")


def build_for_inference(model_cfg: dict, facts: RunFacts) -> nn.Module:
    """The network the run trained, with no pretrained weights fetched (best.pt supplies them)."""
    from resexp.models import build_model

    model_cfg = {**known_keys("model", model_cfg), "pretrained": None}  # known: model.json of older runs
    return build_model(model_cfg, num_classes=int(facts.num_classes), in_channels=int(facts.in_channels),
                       image_size=int(facts.image_size))


def data_config(config: dict, overrides: Iterable[str] = ()) -> DictConfig:
    """The run's data config (typed), with `data.key=value` overrides applied."""
    return overridden("data", config.get("data") or {}, list(overrides))


def load_run(run: str | Path, device: str | torch.device = "cpu", data_overrides: Iterable[str] = ()) -> LoadedRun:
    """Rebuild a run's best model from its best.pt (weights_only) and its saved config."""
    from resexp.train import checkpoint
    from resexp.train.environment import resolve_device

    device = device if isinstance(device, torch.device) else resolve_device(str(device))
    run_dir, ckpt = find_checkpoint(run)
    state = checkpoint.load(ckpt, map_location="cpu", needs=checkpoint.BEST_NEEDS)
    config = _saved_config(state, run_dir, ckpt)
    facts = RunFacts.from_meta(state["meta"], ckpt)
    model = build_for_inference(config["model"], facts)
    checkpoint.check_compatible(state["model"], model, ckpt)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return LoadedRun(run_dir=run_dir, checkpoint=ckpt, model=model, config=config, facts=facts,
                     best=dict(state.get("best") or {}), device=device,
                     data_cfg=data_config(config, data_overrides))


def load_exported(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, model.json contents) from a run directory's best.safetensors + model.json."""
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    card_path = RunPaths(p).card if p.is_dir() else p
    if not card_path.is_file():
        raise CheckpointError(f"no model.json at {card_path}")
    card = json.loads(card_path.read_text())
    weights = card_path.parent / card.get("weights", RunPaths(p).weights.name)
    if not weights.is_file():
        raise CheckpointError(f"no weights file at {weights}")
    model = build_for_inference(card["model"], RunFacts.from_card(card, card_path))
    model.load_state_dict(load_file(str(weights), device="cpu"))
    return model.to(device).eval(), card


# ------------------------------------------------------------------------------------- images
def load_image(path: str | Path, data_cfg: DictConfig, input_shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Decode one file and apply the run's evaluation preprocessing; DataError names the file."""
    from PIL import Image, UnidentifiedImageError

    from resexp.data import preprocess_image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with Image.open(path) as im:  # not loaded first: preprocess_image decodes it as the eval loader does
            x = preprocess_image(im, data_cfg)
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image PIL can read (wrong extension or corrupt)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {error_line(e)}") from None
    if input_shape is not None and tuple(x.shape) != tuple(input_shape):
        raise DataError(f"{path}: preprocessing gave a {list(x.shape)} tensor but the model expects "
                        f"{list(input_shape)}")
    return x
