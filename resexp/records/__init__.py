"""What a run writes down, one record type per concept: the run's facts (facts.py: checkpoints' `meta`,
model.json, best.onnx.json, metrics.json's `params`, `LoadedRun.facts`) and an epoch's row (epoch.py:
metrics.json's `history`, TensorBoard, the trackers, the sweep report)."""

from resexp.records.epoch import EpochRecord
from resexp.records.facts import FORMAT_VERSION, RunFacts

__all__ = ["FORMAT_VERSION", "EpochRecord", "RunFacts"]
