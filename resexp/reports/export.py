"""The best weights as `best.safetensors` plus `model.json`: everything needed to rebuild the
network and feed it images, without pickles and without resexp's checkpoint format.

    from resexp.inference import load_exported
    model, info = load_exported("outputs/2025-01-01/12-00-00-000000")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from resexp.files import atomic_write, atomic_write_text
from resexp.runs import RunPaths

FORMAT = "resexp-model/1"


def save_safetensors(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    # safetensors wants contiguous tensors that share no memory: copy each one (channels_last too)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def model_card(config: dict, meta: dict, best: dict, weights: str = RunPaths(".").weights.name) -> dict:
    """model.json: the model config, the input it expects and the data it was trained on."""
    model_cfg = dict(config.get("model") or {})
    data_cfg = dict(config.get("data") or {})
    channels, size = int(meta["in_channels"]), int(meta["image_size"])
    return {
        "format": FORMAT,
        "weights": weights,
        "name": meta.get("name", model_cfg.get("name")),
        "arch": model_cfg.get("arch"),
        "num_classes": int(meta["num_classes"]),
        "in_channels": channels,
        "image_size": size,
        "input_shape": [channels, size, size],
        "class_names": list(meta.get("class_names") or []),
        # applied after scaling pixels to [0, 1]; null = no normalisation beyond [0, 1]
        "normalisation": {"mean": meta.get("mean"), "std": meta.get("std")},
        "params": meta.get("params"),
        "best": {k: v for k, v in best.items() if isinstance(v, (int, float, str)) or v is None},
        "model": model_cfg,  # build with resexp.models.build_model(model, num_classes=, in_channels=, image_size=)
        "data": {"name": data_cfg.get("name"), "config": data_cfg},  # preprocess_image(img, data.config)
        "seed": config.get("seed"),
    }


def write_export(run_dir: Path, state_dict: dict[str, torch.Tensor], config: dict, meta: dict, best: dict) -> None:
    card = model_card(config, meta, best)
    paths = RunPaths(run_dir)
    save_safetensors(state_dict, paths.weights,
                     metadata={"format": FORMAT, "name": str(card["name"]), "num_classes": str(card["num_classes"])})
    write_card(card, paths.card)


def write_card(card: dict, path: Path) -> None:
    """A model card as JSON (model.json, best.onnx.json)."""
    atomic_write_text(path, json.dumps(card, indent=2, default=str) + "\n")
