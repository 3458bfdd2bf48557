"""A pool of worker processes, one per device slot, for sweeps (`hydra/launcher=pool`).

The executor is loky's ProcessPoolExecutor (concurrent.futures' interface, cloudpickle for the
task, workers that survive between jobs): jobs wait in its one queue and each worker takes the
next as soon as it is free, so a slow job never holds back the others (no batch barrier, unlike a
launcher that runs `n_jobs` at a time and waits for the batch). The only logic of resexp's own is
which device a worker uses: at start-up each worker claims one free slot of the device list (a
lock file per slot, held for the worker's life, which also records its pid) and keeps that device.
A slot list may name one GPU several times: those workers share it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from resexp.errors import ConfigError

_SLOT: dict[str, Any] = {}  # in a worker: its claimed slot {"index", "device", "threads", "file"}


def visible_devices() -> list[str]:
    """Every CUDA device this machine shows, else the CPU (torch.cuda.device_count does not start CUDA)."""
    import torch

    n = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]


def device_slots(devices: str | Sequence[str] | None, workers: int | None) -> list[str]:
    """One entry per worker: `devices` ("cuda:0,cuda:1", a list, or None for every visible one) repeated
    in turn up to `workers` (default: one per listed device)."""
    if devices is None or devices == "" or devices == "all":
        listed = visible_devices()
    elif isinstance(devices, str):
        listed = [d.strip() for d in devices.split(",") if d.strip()]
    else:
        listed = [str(d).strip() for d in devices]
    for d in listed:
        if not (d == "cpu" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ConfigError(f"hydra.launcher.devices: '{d}' is not a device (cpu, cuda or cuda:N)")
    if not listed:
        raise ConfigError("hydra.launcher.devices is empty; list devices (e.g. [cuda:0,cuda:1]) or null for all")
    n = len(listed) if workers is None else int(workers)
    if n < 1:
        raise ConfigError(f"hydra.launcher.workers={workers} must be >= 1 (or null: one per device)")
    return [listed[i % len(listed)] for i in range(n)]


def thread_budget(workers: int, threads: int | None) -> int:
    """CPU threads per worker: `threads`, or this machine's cores shared evenly."""
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"hydra.launcher.threads={threads} must be >= 1 (or null: cores / workers)")
        return int(threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


def _claim_slot(folder: str, slots: list[str], threads: int) -> None:
    """Worker initializer: take the first free slot for good and set the thread budget before torch loads."""
    for i, device in enumerate(slots):
        f = open(Path(folder) / f"slot-{i}", "a+")  # noqa: SIM115 - held open (locked) for the worker's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        _SLOT.update(index=i, device=device, threads=threads, file=f)
        break
    else:  # more workers than slots cannot happen (max_workers = len(slots)); be loud if it does
        raise RuntimeError("no free device slot for a new worker")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Ctrl-C or SIGTERM stops the job a worker runs (the job records it); an idle worker ignores them,
    # so that the pool stays whole while the sweep process stops the rest
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _on_signal)


def _on_signal(signum, frame) -> None:
    if _SLOT.get("busy"):
        raise KeyboardInterrupt(signal.Signals(signum).name)


def worker_slot() -> dict:
    """This worker's slot (index, device, threads); {} outside a pool worker."""
    return {k: v for k, v in _SLOT.items() if k not in ("file", "busy")}


def _in_slot(fn: Callable, args: tuple) -> tuple[dict, float, Any]:
    """Run one job in a worker: (its slot, its start time, its result)."""
    if "torch" in __import__("sys").modules:
        import torch

        torch.set_num_threads(_SLOT["threads"])
    started = time.time()
    _SLOT["busy"] = True
    try:
        return worker_slot(), started, fn(*args)
    finally:
        _SLOT["busy"] = False


class DevicePool:
    """`submit(fn, *args)` runs fn in the next free worker; `slot` of the result says which device."""

    def __init__(self, slots: list[str], threads: int):
        from loky import ProcessPoolExecutor

        self.slots, self.threads = slots, threads
        self._folder = tempfile.TemporaryDirectory(prefix="resexp-pool-")
        self.executor = ProcessPoolExecutor(max_workers=len(slots), initializer=_claim_slot,
                                            initargs=(self._folder.name, slots, threads))

    def submit(self, fn: Callable, *args) -> Future:
        return self.executor.submit(_in_slot, fn, args)

    def worker_pids(self) -> list[int]:
        pids = []
        for f in Path(self._folder.name).glob("slot-*"):
            text = f.read_text().strip()
            if text.isdigit():
                pids.append(int(text))
        return pids

    def stop(self, futures: Sequence[Future], grace_s: float = 1.0) -> None:
        """Stop what runs (Ctrl-C, SIGTERM): jobs not started are cancelled; running ones get SIGTERM
        (unless the terminal's Ctrl-C already reached them) and the time to save last.pt."""
        for f in futures:
            f.cancel()
        running = [f for f in futures if not f.done()]
        if running:
            wait(running, timeout=grace_s)
        if any(not f.done() for f in running):
            for pid in self.worker_pids():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            wait(running, timeout=300)

    def close(self, kill: bool = False) -> None:
        self.executor.shutdown(wait=True, kill_workers=kill)
        self._folder.cleanup()


def first_done(futures) -> set[Future]:
    done, _ = wait(futures, return_when=FIRST_COMPLETED)
    return done
