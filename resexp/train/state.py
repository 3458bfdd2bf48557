"""Where training stands: position, history, best-so-far and the running train metrics, as one
object that last.pt saves and a resumed run restores (`state_dict` / `load_state_dict`).

The keys of `TrainingState.state_dict()` sit at the top level of last.pt, as they always have, so
checkpoints written before this module existed still resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from resexp.records.epoch import EpochRecord
from resexp.train.metrics import Accumulator

# TrainingState.state_dict()'s keys: at the top level of last.pt
STATE_KEYS = ("epoch", "batch", "global_step", "best", "history", "bad_evals", "train_acc")


@dataclass
class Monitor:
    """Best tracking and early stopping on one validation metric (trainer.monitor)."""

    key: str  # val_acc (higher is better) or val_loss (lower is better)
    patience: int | None = None  # validations without improvement before stopping; None: never
    best: dict = field(default_factory=dict)  # EpochRecord.best() of the best epoch (metrics.json's `best`)
    bad_evals: int = 0

    def score(self, val_acc: float, val_loss: float) -> float:
        return val_acc if self.key == "val_acc" else -val_loss

    def update(self, record: EpochRecord) -> bool:
        """Judge a validated epoch; True when it is the new best."""
        if self.best and self.score(record.val_acc, record.val_loss) <= self.score(
                self.best["val_acc"], self.best["val_loss"]):
            self.bad_evals += 1
            return False
        self.best = record.best()
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
    history: list[EpochRecord] = field(default_factory=list)  # one per finished epoch
    train_acc: Accumulator = None  # the current epoch's running loss and hits

    def __post_init__(self):
        if self.train_acc is None:
            self.train_acc = Accumulator(self.device)

    def end_epoch(self, record: EpochRecord) -> None:
        self.history.append(record)
        self.epoch, self.batch = self.epoch + 1, 0
        self.train_acc = Accumulator(self.device)

    def summary(self) -> dict:
        """metrics.json's view of the state."""
        rows = [r.to_dict() for r in self.history]
        return {"best": self.monitor.best, "last": rows[-1] if rows else {}, "history": rows}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "global_step": self.global_step,
                "best": dict(self.monitor.best), "history": [r.to_dict() for r in self.history],
                "bad_evals": self.monitor.bad_evals, "train_acc": self.train_acc.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch, self.global_step = state["epoch"], state["batch"], state["global_step"]
        self.monitor.best, self.monitor.bad_evals = state["best"], state["bad_evals"]
        self.history = [EpochRecord.from_dict(r) for r in state["history"]]
        self.train_acc.load_state_dict(state["train_acc"])
