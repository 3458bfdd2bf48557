"""Ctrl-C and SIGTERM (a cluster's preemption) during training: the current step finishes, the
loop saves last.pt and stops with the command that resumes; a second signal stops at once."""

from __future__ import annotations

import logging
import signal

from resexp.errors import ResexpError

log = logging.getLogger("resexp")


class Interrupted(ResexpError):
    pass


class StopSignals:
    """A context in which SIGINT / SIGTERM set `received` instead of killing the process."""

    def __init__(self, announce: bool):
        self.announce = announce  # rank 0 says it once; every rank stops
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        if self.announce:
            log.warning(f"{signal.Signals(signum).name} received: finishing the current step, then saving last.pt")

    def interrupted(self, epoch: int, batch: int, run_dir) -> Interrupted:
        """The error that ends the run once last.pt is saved (epoch: epochs done; batch: into the next)."""
        where = f"in epoch {epoch + 1} after batch {batch}" if batch else f"after epoch {epoch}"
        return Interrupted(
            f"stopped by {signal.Signals(self.received).name} {where}; last.pt saved. "
            f"Resume with: python -m resexp <same overrides> trainer.resume={run_dir}"
        )
