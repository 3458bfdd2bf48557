"""Ctrl-C and SIGTERM (a cluster's preemption) during training: the current step finishes, the
loop saves last.pt and stops with the command that resumes; a second signal stops at once. Outside
the training loop (the best.pt re-evaluation, the report) the first signal stops at once: every
file is written atomically, so nothing is left half-written.

Under DDP the processes stop at the same step, whichever of them the signal reached and when: they
vote (`StopVote`, every few steps). Without it, a process that stopped one step before another left that one waiting
in the gradients' all-reduce, and rank 0 ended failed, its last.pt unsaved."""

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


class StopVote:
    """The processes' "a signal arrived" flags, summed over a CPU (Gloo) group every `EVERY` optimizer
    steps without waiting: the sum started at one vote is read at the next, so every process acts on
    the same sum at the same step, at most 2 x EVERY steps after the signal, and no GPU work waits for
    the vote. A vote costs about 0.35 ms of the host's time (benchmarks/bench_stop_vote.py), so not
    every step."""

    EVERY = 8

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.group = dist.new_group(backend="gloo")  # a CPU side channel beside NCCL's
        self.pending: tuple | None = None

    def _start(self, flag: bool) -> None:
        import torch

        votes = torch.tensor([int(flag)])
        self.pending = (self.dist.all_reduce(votes, group=self.group, async_op=True), votes)

    def _result(self) -> bool:
        if self.pending is None:
            return False
        work, votes = self.pending
        work.wait()
        self.pending = None
        return votes.item() > 0

    def at_step(self, flag: bool, step: int) -> bool:
        """At every EVERY-th step: the vote started at the previous one; unless it says stop, this one's starts."""
        if step % self.EVERY:
            return False
        stop = self._result()
        if not stop:
            self._start(flag)
        return stop

    def now(self, flag: bool) -> bool:
        """A vote that every process waits for (at an epoch's end), counting the one still under way."""
        stop = self._result()
        self._start(flag)
        return self._result() or stop

    def close(self) -> None:
        """Wait for the vote still under way (every process started it), so that none is left behind."""
        self._result()


class StopSignals:
    """A context in which SIGINT / SIGTERM set `received` instead of killing the process. With a
    `vote` (DDP), `at_step` and `now` say whether any process received one."""

    def __init__(self, announce: bool, vote: StopVote | None = None):
        self.announce = announce  # rank 0 says it once; every rank stops
        self.vote = vote
        self.received: int | None = None
        self.stopping = False  # the decision to stop, taken here or by the vote
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        if self.vote is not None and exc[0] is None:  # after an error, another process may never vote again
            self.vote.close()
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def at_step(self, step: int) -> bool:
        """Stop after optimizer step `step`? (Under DDP: a signal reached a process by the previous vote.)"""
        flag = self.received is not None
        return self._decide(self.vote.at_step(flag, step) if self.vote is not None else flag)

    def now(self) -> bool:
        """Stop here? Every process asks at the same point (an epoch's end)."""
        if self.stopping:  # decided at a step: every process knows it, no vote needed
            return True
        flag = self.received is not None
        return self._decide(self.vote.now(flag) if self.vote is not None else flag)

    def _decide(self, stop: bool) -> bool:
        if stop and self.received is None and self.announce:
            log.warning("another process received a stop signal: finishing the current step, then saving last.pt")
        self.stopping = stop
        return stop

    def _on_signal(self, signum, frame) -> None:
        if self.received is not None:
            raise StopNow(signum)
        self.received = signum
        if self.announce:
            log.warning(f"{signal.Signals(signum).name} received: finishing the current step, then saving last.pt")

    def interrupted(self, epoch: int, batch: int, run_dir) -> Interrupted:
        """The error that ends the run once last.pt is saved (epoch: epochs done; batch: into the next)."""
        by = signal.Signals(self.received).name if self.received is not None else "a signal to another process"
        return Interrupted(f"stopped by {by} {position(epoch, batch)}; last.pt saved. {resume_hint(run_dir)}")
