"""Multirun jobs (`python -m resexp -m ...`): a failing job is recorded and the sweep goes on.

Hydra's launchers stop a sweep at the first exception, so in multirun mode the task function
catches everything a job can raise (an exception, `SystemExit`, a NaN stop, a CUDA out-of-memory
error), records it in the job's `metrics.json` (`"status": "failed"`, `"error"`) and
`error.log` (the traceback), and returns NaN to the sweeper. When the sweep ends,
`SweepCallback.on_multirun_end` (registered in conf/config.yaml under `hydra.callbacks`) writes
the sweep report from the job directories' files, so it works for launchers whose jobs run in
other processes (joblib, submitit), and exits non-zero naming the failed jobs.

This module is imported by Hydra at start-up (the callback): keep torch out of its top level.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from resexp.errors import ResexpError, RunDirError, error_line
from resexp.ranks import is_main_process
from resexp.runs import RunPaths, outputs_root, write_metrics

log = logging.getLogger("resexp")

INTERRUPTED_EXIT = 130
BEFORE_TRAINING = "interrupted before training started"  # a run records its own interruption once training runs



def _from_submitit_requeue(e: SystemExit) -> bool:
    """submitit's SIGUSR2 handler requeues the job and then calls sys.exit(-1): let that through."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}submitit{os.sep}" in tb.tb_frame.f_code.co_filename


def _free_memory() -> None:
    """After a failed job (an out-of-memory error above all), give its memory back for the next."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# jobs refused because their directory held an earlier job (nothing of theirs is in the directories
# the report reads); jobs of launchers that run in this process (the basic one)
REFUSED: list[str] = []


def run_sweep_job(cfg, run: Callable[..., float]) -> float:
    """One multirun job: `run(cfg)`'s best validation accuracy, or NaN after recording a failure."""
    from hydra.core.hydra_config import HydraConfig

    from resexp.train.signals import Interrupted

    hydra_cfg = HydraConfig.get()
    run_dir, num = Path(hydra_cfg.runtime.output_dir), hydra_cfg.job.num
    started = time.perf_counter()
    wall = lambda: round(time.perf_counter() - started, 3)
    try:
        value = run(cfg)
    except (Interrupted, KeyboardInterrupt) as e:
        # Ctrl-C (or SIGTERM) stops the whole sweep, not just this job. An Interrupted comes from the
        # run, which recorded it as a single run does (resexp/train/stopped.py); before training, nothing had.
        stop = {} if isinstance(e, Interrupted) else {"status": "interrupted", "error": BEFORE_TRAINING}
        write_metrics(run_dir, {**stop, "wall_s": wall()}, merge=True)
        if is_main_process():
            log.error(f"job #{num} stopped: {error_line(e)}; the sweep stops here")
            sweep_dir = Path(str(hydra_cfg.sweep.dir))
            summary_lines(sweep_dir)
            from resexp.trackers import end_sweep

            end_sweep(cfg.get("logger"), sweep_dir, "interrupted")  # on_multirun_end, which would, never comes
        raise SystemExit(INTERRUPTED_EXIT) from None
    except SystemExit as e:
        if _from_submitit_requeue(e):
            requeued = {"status": "requeued", "error": "SystemExit: requeued by submitit", "wall_s": wall()}
            write_metrics(run_dir, requeued, merge=True)
            raise
        failure = e
    except RunDirError as e:  # the job's directory holds an earlier job: record nothing over it
        if is_main_process():
            log.error(f"job #{num} refused: {e}; the sweep goes on")
            REFUSED.append(f"#{num}: {e}")
        return float("nan")
    except Exception as e:  # noqa: BLE001 - any failure of one job is recorded; the sweep goes on
        failure = e
    else:
        write_metrics(run_dir, {"wall_s": wall()}, merge=True)
        return value

    line = error_line(failure)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        RunPaths(run_dir).error_log.write_text("".join(traceback.format_exception(failure)))
        write_metrics(run_dir, {"status": "failed", "error": line, "wall_s": wall()}, merge=True)
        log.error(f"job #{num} failed: {line} (traceback in {RunPaths(run_dir).error_log}); the sweep goes on")
    del failure
    _free_memory()
    return float("nan")


def summary_lines(sweep_dir: Path, write: bool = True) -> tuple[list, list[str]]:
    """The sweep's jobs (read from their directories) and, with `write`, the report written into the
    sweep directory; returns (jobs, lines to log)."""
    from resexp.reports.sweep import ReportError, build_report, collect_jobs

    try:
        jobs = collect_jobs([sweep_dir])
    except ReportError as e:
        return [], [f"no sweep report: {e}"]
    lines = []
    if write:
        try:
            paths = build_report(jobs, sweep_dir, root=sweep_dir)
            lines.append(f"sweep report: {', '.join(str(p) for p in paths)}")
        except Exception as e:  # noqa: BLE001 - a broken plot must not hide the jobs' results
            lines.append(f"warning: the sweep report could not be written: {error_line(e)}")
    return jobs, lines


def continue_optuna_study(config) -> None:
    """An Optuna search with a storage (SQLite) continues its study: `n_trials` counts the trials
    that study finished before, so re-running an interrupted search runs only the rest. A trial
    the interruption left RUNNING is not counted: it is run again (with new parameters)."""
    from omegaconf import read_write

    sweeper_cfg = config.hydra.sweeper
    storage, name = str(sweeper_cfg.storage), sweeper_cfg.study_name
    if storage.startswith("sqlite:///"):  # SQLite creates the file, not its folder
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # a new study
        return
    done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    wanted = int(sweeper_cfg.n_trials)
    left = max(0, wanted - done)
    log.info(f"Optuna study '{name}' in {storage}: {done} of {wanted} trials finished earlier; running {left} more")
    with read_write(sweeper_cfg):
        sweeper_cfg.n_trials = left
    if left == 0:  # no job will create the sweep directory, where Optuna writes its results
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)


class SweepCallback(Callback):
    """Writes sweep_summary.{csv,md} and sweep_val_acc.png at the sweep's root when a multirun ends,
    and exits non-zero when a job did not complete. Continues an Optuna study kept in a storage."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        from resexp.cli import exit_with_error
        from resexp.trackers import start_sweep

        sweeper = config.hydra.sweeper
        if "optuna" in str(sweeper.get("_target_", "")) and sweeper.get("storage") and sweeper.get("study_name"):
            continue_optuna_study(config)
        if is_main_process():  # the sweep's parent run (MLflow), when a chosen tracker has one
            sweep_dir = Path(str(config.hydra.sweep.dir))
            try:
                start_sweep(config.get("logger"), sweep_dir, outputs_root(sweep_dir))
            except ResexpError as e:
                exit_with_error(e)

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        from resexp.trackers import end_sweep

        if not is_main_process():
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        jobs, lines = summary_lines(sweep_dir, write=True)
        for line in lines:
            log.info(line)
        failed = [j for j in jobs if j.status != "completed"]
        end_sweep(config.get("logger"), sweep_dir, "failed" if failed or REFUSED else "completed")
        if REFUSED:
            print(f"error: {len(REFUSED)} sweep job(s) were not run: {'; '.join(REFUSED)}", file=sys.stderr)
            sys.stderr.flush()
            REFUSED.clear()
            if not failed:
                raise SystemExit(1)
        if failed:
            from resexp.reports.sweep import split_overrides

            _, own = split_overrides(jobs)
            listing = "; ".join(f"#{j.name} ({' '.join(own[j.name]) or 'no overrides'}): {j.status}"
                                + (f" - {j.error}" if j.error else "") for j in failed)
            print(f"error: {len(failed)} of {len(jobs)} sweep jobs did not complete: {listing}. "
                  f"Report: {sweep_dir / 'sweep_summary.md'}", file=sys.stderr)
            sys.stderr.flush()
            raise SystemExit(1)
