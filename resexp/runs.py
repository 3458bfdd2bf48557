"""A run directory: where each of its files lives, the facts a run records about its network and
data, and the one writer of metrics.json.

    outputs/<date>/<time>/
      .hydra/config.yaml, .hydra/overrides.yaml   the composed config and the overrides
      checkpoints/best.pt, checkpoints/last.pt
      metrics.json, data_split.json, tb/, error.log (a failed sweep job)
      curves.png, confusion_matrix.png, predictions.png, model_summary.txt, best.safetensors, model.json
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from resexp.ranks import is_main_process


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def config(self) -> Path:
        return self.root / ".hydra" / "config.yaml"

    @property
    def overrides(self) -> Path:
        return self.root / ".hydra" / "overrides.yaml"

    @property
    def data_split(self) -> Path:
        return self.root / "data_split.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    def report_file(self, name: str) -> Path:
        """One of the run report's files (curves.png, model.json, ...): they sit at the top level."""
        return self.root / name


@dataclass(frozen=True)
class RunFacts:
    """What a run learnt about its network and data when it was built; checkpoints keep it under
    `meta` (as_dict), and inference rebuilds the network and its preprocessing from it."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: list[float] | None
    std: list[float] | None
    params: int | None

    @classmethod
    def from_dict(cls, meta: dict) -> RunFacts:
        """A checkpoint's `meta`; keys an older or hand-made one lacks read as None."""
        return cls(**{f.name: meta.get(f.name) for f in fields(cls)})

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def labels(self) -> list[str]:
        """The class names, or the class indices as text when the run has no names for every class."""
        names = list(self.class_names or [])
        return names if len(names) == self.num_classes else [str(i) for i in range(self.num_classes)]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return int(self.in_channels), int(self.image_size), int(self.image_size)


# metrics.json's layout; a record starts as this (a job that failed before training wrote one)
EMPTY_METRICS = {"status": "failed", "best": {}, "last": {}, "history": [], "params": None}


def write_metrics(run_dir: Path, values: dict, merge: bool = False) -> None:
    """metrics.json (rank 0 only): `values` over the empty record, or with `merge` over what the file
    holds (a sweep job adding its wall time or its failure to the record training wrote)."""
    if not is_main_process():
        return
    path = RunPaths(run_dir).metrics
    record = dict(EMPTY_METRICS)
    if merge:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    record.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(record), indent=2, allow_nan=False))
    os.replace(tmp, path)  # a reader (the sweep report, a dashboard) never sees half a file


def _finite(v):
    """JSON has no NaN/Inf: a diverged metric is written as null."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v
