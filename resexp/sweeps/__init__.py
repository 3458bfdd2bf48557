"""Sweeps: multirun jobs that fail without stopping the sweep, and the sweep's end and report
(multirun.py, Hydra's callback in conf/config.yaml); beyond Hydra's basic sweeps, the worker pool
(pool.py, launcher.py), the Optuna search (space.py, study.py, search.py, trial.py) and what makes a
sweep resumable (jobs.py). Hydra reaches them through the plugins in hydra_plugins/resexp_sweeps/."""
