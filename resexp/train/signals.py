"""Ctrl-C and SIGTERM (a cluster's preemption) during training: the current step finishes, the
loop saves last.pt and stops with the command that resumes; a second signal stops at once. Outside
the training loop (the best.pt re-evaluation, the report) the first signal stops at once: every
file is written atomically, so nothing is left half-written."""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager

from resexp.errors import ResexpError

log = logging.getLogger("resexp")


class Interrupted(ResexpError):
    pass


class StopNow(KeyboardInterrupt):
    """A signal that stops the run at once, wherever it is (a BaseException, so that no `except
    Exception` on the way catches it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_now(signum, frame) -> None:
    raise StopNow(signum)


@contextmanager
def stop_at_once():
    """A context in which SIGINT / SIGTERM raise StopNow (SIGTERM would otherwise kill without a word)."""
    previous = {s: signal.signal(s, _stop_now) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def position(epoch: int, batch: int) -> str:
    """Where a run stands (epoch: epochs done; batch: batches into the next)."""
    return f"in epoch {epoch + 1} after batch {batch}" if batch else f"after epoch {epoch}"


def resume_hint(run_dir) -> str:
    return f"Resume with: python -m resexp <same overrides> trainer.resume={run_dir}"


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
            raise StopNow(signum)
        self.received = signum
        if self.announce:
            log.warning(f"{signal.Signals(signum).name} received: finishing the current step, then saving last.pt")

    def interrupted(self, epoch: int, batch: int, run_dir) -> Interrupted:
        """The error that ends the run once last.pt is saved (epoch: epochs done; batch: into the next)."""
        return Interrupted(f"stopped by {signal.Signals(self.received).name} {position(epoch, batch)}; "
                           f"last.pt saved. {resume_hint(run_dir)}")
