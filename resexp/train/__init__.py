"""Training: one job end to end (run.py), the loop (trainer.py), the callbacks it is built with
(callbacks.py: checkpoints, logging, metrics.json, the end-of-run steps), where a run stands (result.py,
state.py), checkpoints (checkpoint.py), evaluation (evaluation.py), signals, environment, metrics and
logging."""

from resexp.train.pipeline import run

__all__ = ["run"]
