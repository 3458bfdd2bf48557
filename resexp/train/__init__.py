"""Training: one job end to end (run.py), the loop (trainer.py), its state (state.py), checkpoints
(checkpoint.py), evaluation (evaluation.py), signals, environment, metrics and logging."""

from resexp.train.run import run

__all__ = ["run"]
