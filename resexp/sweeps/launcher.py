"""`hydra/launcher=pool`: the sweep's jobs on a DevicePool (resexp/sweeps/pool.py), one worker per
device slot. Each job is composed and run as Hydra's own launchers do (hydra.core.utils.run_job), in
a worker that sets `trainer.device` to its slot's device unless the job's overrides choose one.

Ctrl-C or SIGTERM stops the sweep: jobs not started are cancelled, running ones save last.pt and
record `interrupted`, and the sweep exits 130; the same command again continues it."""

from __future__ import annotations

import atexit
import logging
import signal
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("resexp")
STOPPED = "stopped"  # a job's result when a signal stopped it


def execute_job(idx: int, overrides: Sequence[str], hydra_context, config, task_function, singleton_state):
    """In a worker: compose job `idx` and run it (as hydra-joblib-launcher's execute_job, plus the device)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    from omegaconf import open_dict

    from resexp.sweeps.pool import worker_slot

    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
        chosen = any(o.lstrip("+~").split("=")[0] == "trainer.device" for o in overrides)
        if "trainer" in sweep_config and not chosen:
            sweep_config.trainer.device = worker_slot()["device"]
    HydraConfig.instance().set_config(sweep_config)
    try:
        return run_job(hydra_context=hydra_context, config=sweep_config, task_function=task_function,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except (SystemExit, KeyboardInterrupt):  # the job recorded its stop; the sweep process decides what follows
        return STOPPED


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


@contextmanager
def stoppable():
    """SIGTERM in the sweep process, like Ctrl-C, becomes an exception where it waits."""
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Pool:
    """The launcher's state: the Hydra context and a DevicePool started on first use."""

    def __init__(self, devices, workers, threads):
        from resexp.sweeps.pool import device_slots, thread_budget

        self.slots = device_slots(devices, workers)
        self.threads = thread_budget(len(self.slots), threads)
        self.pool = None
        self.hydra_context = self.task_function = self.config = None
        self.futures: list[Future] = []

    @property
    def workers(self) -> int:
        return len(self.slots)

    def setup(self, hydra_context, task_function, config) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def submit(self, overrides: Sequence[str], idx: int) -> Future:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides

        from resexp.sweeps.pool import DevicePool

        if self.pool is None:
            Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
            log.info(f"pool: {self.workers} worker(s) on {', '.join(self.slots)}, {self.threads} CPU thread(s) each")
            self.pool = DevicePool(self.slots, self.threads)
            atexit.register(self.close)
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        f = self.pool.submit(execute_job, idx, list(overrides), self.hydra_context, self.config,
                             self.task_function, Singleton.get_state())
        self.futures.append(f)
        return f

    def wait_first(self, futures) -> set[Future]:
        """The futures done first; a signal here, or a job stopped by one, stops the sweep (exit 130)."""
        from resexp.sweeps.pool import first_done

        try:
            with stoppable():
                done = first_done(futures)
                if any(f.exception() is None and f.result()[2] == STOPPED for f in done):
                    raise _Stop("a job was stopped")
                return done
        except (KeyboardInterrupt, _Stop) as e:
            self.stop(str(e) or "SIGINT")

    def stop(self, why: str):
        from resexp.sweeps.multirun import INTERRUPTED_EXIT, sweep_stopped

        log.error(f"sweep stopped ({why}): running jobs save last.pt; run the same command again to continue")
        with stoppable():
            try:
                self.pool.stop(self.futures)
            except (KeyboardInterrupt, _Stop):
                pass
        self.close(kill=True)
        sweep_stopped(self.config, Path(str(self.config.hydra.sweep.dir)))
        raise SystemExit(INTERRUPTED_EXIT)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """Every job queued at once; each worker takes the next as soon as it is free."""
        futures = [self.submit(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        pending = set(futures)
        while pending:
            pending -= self.wait_first(pending)
        return [result(f) for f in futures]

    def close(self, kill: bool = False) -> None:
        if self.pool is not None:
            self.pool.close(kill)
            self.pool = None


def result(f: Future):
    """A finished job's JobReturn (a worker that died gives a failed one)."""
    from hydra.core.utils import JobReturn, JobStatus

    try:
        return f.result()[2]
    except Exception as e:  # noqa: BLE001 - a crashed worker: the job failed, the sweep reports it
        ret = JobReturn()
        ret.status, ret._return_value = JobStatus.FAILED, e
        return ret
