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

import copy
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
from resexp.run_dir import RunPaths, outputs_root, read_metrics, write_metrics

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
    """One multirun job: `run(cfg)`'s best validation accuracy, or NaN after recording a failure.
    Run again in the same sweep directory, a job that ended is kept and one that was stopped
    resumes (resexp/sweeps/jobs.py); in a search, the job reports to the study (resexp/sweeps/trial.py)."""
    from hydra.core.hydra_config import HydraConfig

    from resexp.sweeps.jobs import job_lock
    from resexp.train.environment import _export_submitit_ranks

    _export_submitit_ranks()  # a DDP job's tasks learn their ranks now: rank 0 alone holds the job's lock
    hydra_cfg = HydraConfig.get()
    run_dir, num = Path(hydra_cfg.runtime.output_dir), hydra_cfg.job.num
    try:
        with job_lock(run_dir):
            return _run_job(cfg, run, run_dir, num, [str(o) for o in hydra_cfg.overrides.task])
    except RunDirError as e:  # the job's directory holds an earlier job: record nothing over it
        if is_main_process():
            log.error(f"job #{num} refused: {e}; the sweep goes on")
            REFUSED.append(f"#{num}: {e}")
        return float("nan")


def _run_job(cfg, run: Callable[..., float], run_dir: Path, num: int, overrides: list[str]) -> float:
    from resexp.sweeps.jobs import record
    from resexp.sweeps.pool import worker_slot
    from resexp.sweeps.trial import Pruned, objective, trial_for_job
    from resexp.train.signals import Interrupted

    started = time.perf_counter()
    wall = lambda: round(time.perf_counter() - started, 3)
    trial = None
    try:
        trial = trial_for_job(cfg)
        cfg, kept = _after_earlier_run(cfg, run_dir, num, overrides, trial)
        if kept is not None:
            return kept
        if is_main_process():
            record(run_dir, overrides, str(cfg.trainer.device), worker_slot())
        value = run(cfg, on_validated=[trial.on_validated]) if trial is not None else run(cfg)
    except Pruned as e:  # the run recorded it (metrics.json: "pruned", its history and last.pt kept)
        write_metrics(run_dir, {"wall_s": wall()}, merge=True)
        trial.tell("pruned")
        log.info(f"job #{num}: {e}")
        return e.value
    except (Interrupted, KeyboardInterrupt) as e:
        # Ctrl-C (or SIGTERM) stops the whole sweep, not just this job. An Interrupted comes from the
        # run, which recorded it as a single run does (resexp/train/stopped.py), as does a stop in the
        # trackers' end of a run whose record says completed; before training, nothing had been recorded.
        recorded = isinstance(e, Interrupted) or (read_metrics(run_dir) or {}).get("status") == "completed"
        stop = {} if recorded else {"status": "interrupted", "error": BEFORE_TRAINING}
        write_metrics(run_dir, {**stop, "wall_s": wall()}, merge=True)
        if is_main_process():
            log.error(f"job #{num} stopped: {error_line(e)}; the sweep stops here")
            if not worker_slot():  # a pool worker's sweep process reports the stop itself
                sweep_stopped(cfg)
        raise SystemExit(INTERRUPTED_EXIT) from None
    except SystemExit as e:
        if _from_submitit_requeue(e):
            requeued = {"status": "requeued", "error": "SystemExit: requeued by submitit", "wall_s": wall()}
            write_metrics(run_dir, requeued, merge=True)
            raise
        failure = e
    except RunDirError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of one job is recorded; the sweep goes on
        failure = e
    else:
        write_metrics(run_dir, {"wall_s": wall()}, merge=True)
        if trial is not None:
            trial.tell("completed", objective(read_metrics(run_dir) or {}, trial.monitor))
        return value

    _record_failure(failure, run_dir, num, trial, wall())
    del failure
    _free_memory()
    return float("nan")


def _after_earlier_run(cfg, run_dir: Path, num: int, overrides: list[str], trial) -> tuple[Any, float | None]:
    """What an earlier run of this sweep left in the job's directory decides how it runs now: a job that
    ended is kept (returns its value), a stopped one resumes from its own last.pt (returns the config
    with trainer.resume) or, without one, starts afresh on a cleared directory."""
    from omegaconf import open_dict

    from resexp.sweeps.jobs import KEPT, clear_partial, earlier
    from resexp.sweeps.trial import objective

    before = earlier(run_dir, overrides)
    if before.status in KEPT:
        log.info(f"job #{num} {before.status} in an earlier run of this sweep: kept ({run_dir})")
        if trial is not None:
            trial.tell(before.status, objective(before.metrics or {}, trial.monitor))
        best = (before.metrics or {}).get("best") or {}
        return cfg, float(best["val_acc"]) if best.get("val_acc") is not None else float("nan")
    if before.status is not None:
        if before.resumable:
            cfg = copy.deepcopy(cfg)
            with open_dict(cfg):
                cfg.trainer.resume = str(run_dir)
            log.info(f"job #{num} was stopped ({before.status}): it resumes from its last.pt")
        elif is_main_process():
            clear_partial(run_dir)
    return cfg, None


def _record_failure(failure: BaseException, run_dir: Path, num: int, trial, wall_s: float) -> None:
    """A failed job: its trial told, the traceback in error.log, metrics.json says failed; the sweep goes on."""
    line = error_line(failure)
    if trial is not None:
        trial.tell("failed")
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        RunPaths(run_dir).error_log.write_text("".join(traceback.format_exception(failure)))
        write_metrics(run_dir, {"status": "failed", "error": line, "wall_s": wall_s}, merge=True)
        log.error(f"job #{num} failed: {line} (traceback in {RunPaths(run_dir).error_log}); the sweep goes on")


def sweep_stopped(cfg, sweep_dir: Path | None = None) -> None:
    """A stopped sweep's report and trackers (on_multirun_end, which would write them, never comes)."""
    from hydra.core.hydra_config import HydraConfig

    from resexp.trackers import end_sweep

    sweep_dir = sweep_dir or Path(str(HydraConfig.get().sweep.dir))
    for line in summary_lines(sweep_dir)[1]:
        log.info(line)
    end_sweep(cfg.get("logger"), sweep_dir, "interrupted")


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


class SweepCallback(Callback):
    """Writes sweep_summary.{csv,md} and sweep_val_acc.png at the sweep's root when a multirun ends,
    and exits non-zero when a job did not complete (a pruned trial is a result, not a failure)."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        from resexp.cli import exit_with_error
        from resexp.trackers import start_sweep

        if str(config.hydra.launcher.get("_target_", "")).endswith("submitit_launcher.SlurmLauncher"):
            from resexp.sweeps.slurm import quiet_sacct

            quiet_sacct()
        if is_main_process():  # the sweep's parent run (MLflow), when a chosen tracker has one
            sweep_dir = Path(str(config.hydra.sweep.dir))
            try:
                start_sweep(config.get("logger"), sweep_dir, outputs_root(sweep_dir))
            except ResexpError as e:
                exit_with_error(e)

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        from resexp.cli import print_error
        from resexp.trackers import end_sweep

        if not is_main_process():
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        jobs, lines = summary_lines(sweep_dir, write=True)
        for line in lines:
            log.info(line)
        failed = [j for j in jobs if j.status not in ("completed", "pruned")]
        end_sweep(config.get("logger"), sweep_dir, "failed" if failed or REFUSED else "completed")
        if REFUSED:
            print_error(f"{len(REFUSED)} sweep job(s) were not run: {'; '.join(REFUSED)}")
            REFUSED.clear()
            if not failed:
                raise SystemExit(1)
        if failed:
            from resexp.reports.sweep import split_overrides

            _, own = split_overrides(jobs)
            listing = "; ".join(f"#{j.name} ({' '.join(own[j.name]) or 'no overrides'}): {j.status}"
                                + (f" - {j.error}" if j.error else "") for j in failed)
            print_error(f"{len(failed)} of {len(jobs)} sweep jobs did not complete: {listing}. "
                        f"Report: {sweep_dir / 'sweep_summary.md'}")
            raise SystemExit(1)
