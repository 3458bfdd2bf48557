"""Where training stands: position, history, best-so-far and the running train metrics, as one
object that last.pt saves and a resumed run restores (`state_dict` / `load_state_dict`).

The keys of `TrainingState.state_dict()` sit at the top level of last.pt, as they always have, so
checkpoints written before this module existed still resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from resexp.train.metrics import Accumulator

# TrainingState.state_dict()'s keys: at the top level of last.pt
STATE_KEYS = ("epoch", "batch", "global_step", "best", "history", "bad_evals", "train_acc")
# what best.pt and metrics.json keep of the best epoch's row
BEST_KEYS = ("epoch", "val_loss", "val_acc", "val_acc5", "train_loss", "train_acc")


@dataclass
class Monitor:
    """Best tracking and early stopping on one validation metric (trainer.monitor)."""

    key: str  # val_acc (higher is better) or val_loss (lower is better)
    patience: int | None = None  # validations without improvement before stopping; None: never
    best: dict = field(default_factory=dict)
    bad_evals: int = 0

    def score(self, row: dict) -> float:
        return row["val_acc"] if self.key == "val_acc" else -row["val_loss"]

    def update(self, row: dict) -> bool:
        """Judge a validated epoch's row; True when it is the new best."""
        if self.best and self.score(row) <= self.score(self.best):
            self.bad_evals += 1
            return False
        self.best = {k: row[k] for k in BEST_KEYS}
        self.bad_evals = 0
        return True

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience


@dataclass
class TrainingState:
    monitor: Monitor
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epoch: int = 0  # epochs done
    batch: int = 0  # batches done in the current epoch
    global_step: int = 0  # optimizer steps
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    train_acc: Accumulator = None  # the current epoch's running loss and hits

    def __post_init__(self):
        if self.train_acc is None:
            self.train_acc = Accumulator(self.device)

    def end_epoch(self, row: dict) -> None:
        self.history.append(row)
        self.epoch, self.batch = self.epoch + 1, 0
        self.train_acc = Accumulator(self.device)

    def summary(self) -> dict:
        """metrics.json's view of the state."""
        return {"best": self.monitor.best, "last": self.history[-1] if self.history else {},
                "history": self.history}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "global_step": self.global_step,
                "best": dict(self.monitor.best), "history": list(self.history),
                "bad_evals": self.monitor.bad_evals, "train_acc": self.train_acc.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch, self.global_step = state["epoch"], state["batch"], state["global_step"]
        self.monitor.best, self.monitor.bad_evals = state["best"], state["bad_evals"]
        self.history = state["history"]
        self.train_acc.load_state_dict(state["train_acc"])
