"""One epoch's record: metrics.json's `history` rows (and `last`), last.pt's history, TensorBoard's and
the trackers' per-epoch metrics, the console line and the sweep report all read it from here.

The JSON keys are a contract users' scripts read (DESIGN.md): `to_dict` writes exactly these,
in this order; `from_dict` reads any row an earlier resexp wrote (keys it lacks read as None, keys
this version does not know are kept and written back)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

# what best.pt and metrics.json's `best` keep of the best epoch's row
BEST_KEYS = ("epoch", "val_loss", "val_acc", "val_acc5", "train_loss", "train_acc")
# TensorBoard's and the trackers' names for the row's values
TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss", "val_acc": "val/acc",
        "val_acc5": "val/acc5", "lr": "train/lr", "images_per_s": "train/throughput"}


def scores(split: str, result: dict) -> dict:
    """An evaluation's loss/acc/acc5 as a row's columns for `split` (val, test): val_loss, val_acc, ..."""
    return {f"{split}_loss": result["loss"], f"{split}_acc": result["acc"], f"{split}_acc5": result["acc5"]}


@dataclass
class EpochRecord:
    epoch: int  # 1-based: the epochs done when the row was made
    train_loss: float | None = None
    train_acc: float | None = None
    train_acc5: float | None = None
    val_loss: float | None = None  # None: not validated this epoch (trainer.val_every)
    val_acc: float | None = None
    val_acc5: float | None = None
    lr: float | None = None
    seconds: float | None = None
    images_per_s: float | None = None
    extra: dict = field(default_factory=dict)  # keys of a row this version does not know, kept as they were

    @property
    def validated(self) -> bool:
        return self.val_acc is not None

    def to_dict(self) -> dict:
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**row, **self.extra}

    @classmethod
    def from_dict(cls, row: dict) -> EpochRecord:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in row.items() if k in known},
                   extra={k: v for k, v in row.items() if k not in known})

    def best(self) -> dict:
        """What best.pt and metrics.json's `best` keep of this row."""
        return {k: getattr(self, k) for k in BEST_KEYS}

    def scalars(self) -> dict[str, float]:
        """The values TensorBoard and the trackers log, by their tag; unvalidated columns left out."""
        return {tag: getattr(self, key) for key, tag in TAGS.items() if getattr(self, key) is not None}

    def line(self, epochs: int) -> str:
        """The console line."""
        val = (f"  val loss {self.val_loss:.4f} acc {self.val_acc:.2%} acc5 {self.val_acc5:.2%}"
               if self.validated else "")
        return (f"epoch {self.epoch}/{epochs}  train loss {self.train_loss:.4f} acc {self.train_acc:.2%}{val}"
                f"  lr {self.lr:.3g}  {self.seconds:.1f}s  {self.images_per_s:.0f} img/s")
