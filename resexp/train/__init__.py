"""Training: the loop (trainer.py), one job end to end (run.py), checkpoints, metrics, logging."""

from resexp.train.run import run

__all__ = ["run"]
