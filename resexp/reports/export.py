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
from resexp.records.facts import CARD_FORMAT as FORMAT
from resexp.records.facts import RunFacts
from resexp.run_dir import RunPaths


def save_safetensors(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    # safetensors wants contiguous tensors that share no memory: copy each one (channels_last too)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def write_export(run_dir: Path, state_dict: dict[str, torch.Tensor], config: dict, facts: RunFacts,
                 best: dict) -> None:
    """best.safetensors and its card, model.json (RunFacts.card)."""
    paths = RunPaths(run_dir)
    card = facts.card(config, best, weights=paths.weights.name)
    save_safetensors(state_dict, paths.weights,
                     metadata={"format": FORMAT, "name": str(card["name"]), "num_classes": str(card["num_classes"])})
    write_card(card, paths.card)


def write_card(card: dict, path: Path) -> None:
    """A model card as JSON (model.json, best.onnx.json)."""
    atomic_write_text(path, json.dumps(card, indent=2, default=str) + "\n")
