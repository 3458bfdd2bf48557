"""Hydra's Launcher interface for resexp's worker pool (resexp/sweeps/launcher.py)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.plugins.launcher import Launcher


class PoolLauncher(Launcher):
    def __init__(self, devices=None, workers=None, threads=None) -> None:
        from resexp.cli import exit_with_error
        from resexp.errors import ConfigError
        from resexp.sweeps.launcher import Pool

        try:
            self.pool = Pool(devices, workers, threads)
        except ConfigError as e:
            exit_with_error(e)

    @property
    def workers(self) -> int:
        return self.pool.workers

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.pool.setup(hydra_context, task_function, config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        return self.pool.launch(job_overrides, initial_job_idx)

    # for the search sweeper: one job at a time, each started as soon as a worker is free
    def submit(self, overrides: Sequence[str], idx: int):
        return self.pool.submit(overrides, idx)

    def wait_first(self, futures):
        return self.pool.wait_first(futures)

    def close(self) -> None:
        self.pool.close()
