"""Which configs continue a run: the one definition that `trainer.resume` checks and `trainer.resume=auto`
searches with. A continuation may change only how long the run goes, what it prints, and where and how
fast it computes (the same arithmetic up to rounding); every other key is the run's identity."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from resexp.config import leaves, saved_config
from resexp.errors import CheckpointError

# keys that leave the numbers alone
NOT_THE_NUMBERS = frozenset({
    # where it continues from (bit for bit the run never stopped)
    "trainer.resume",
    # what it prints or writes besides the training itself (a key's sub-keys go with it: logger.mlflow.*)
    "trainer.progress", "trainer.log_every_n_steps", "trainer.checkpoint_every_n_steps",
    "trainer.report", "logger",
    # where and how fast: batches and augmentation are seeded by (seed, epoch, batch), not by device or worker
    "trainer.device", "trainer.compile", "trainer.compile_mode", "trainer.channels_last", "trainer.deterministic",
    "optimizer.fused", "data.num_workers", "data.eval_batch_size",
    # where the same files are (a cluster job that copies the data to its node's scratch disk)
    "data.root", "data.download",
})
# and how long: the run's own history and position come from last.pt
MAY_DIFFER = NOT_THE_NUMBERS | {"trainer.epochs", "trainer.early_stopping_patience"}


def listed(key: str, keys: frozenset[str]) -> bool:
    """`key` or a section above it is in `keys`."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1))


SHOWN = 8  # differences named in the message; the rest are counted


def differences(run: Mapping, new: Mapping) -> list[tuple[str, object, object]]:
    """(key, the run's value, the new value) for each identity key that differs. A key only one side
    has is skipped: an older version's config lacks keys added since, and an option's own keys
    (sgd's momentum, adam's betas) differ only with its name, which both have."""
    old, now = leaves(saved_config(run)), leaves(saved_config(new))
    return [(k, old[k], now[k]) for k in now if k in old and not listed(k, MAY_DIFFER) and old[k] != now[k]]


def _text(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def check_continuation(run: Mapping | None, new: Mapping, source: Path) -> None:
    """A resume whose config differs from the run's in an identity key stops, naming each difference
    (a checkpoint without a config, hand-made, is left to the weights' shape check)."""
    if not isinstance(run, Mapping):
        return
    diffs = differences(run, new)
    if not diffs:
        return
    resume = new.get("trainer", {}).get("resume")
    shown, more = diffs[:SHOWN], len(diffs) - SHOWN
    was = ", ".join(f"{k}={_text(a)}" for k, a, _ in shown)
    now = ", ".join(_text(b) for _, _, b in shown)
    raise CheckpointError(
        f"trainer.resume={resume if resume not in (None, 'auto') else source}: the run was {was}; now {now}"
        + (f" (and {more} more)" if more > 0 else "")
        + ". A continuation may change only trainer.epochs and keys that leave the numbers alone (device, "
        f"workers, logging: README, Resume); to start a new run from its weights use trainer.finetune_from={source}"
    )
