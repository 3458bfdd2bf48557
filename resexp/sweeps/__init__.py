"""Sweeps beyond Hydra's basic ones: the worker pool (pool.py, launcher.py), the Optuna search
(space.py, study.py, search.py, trial.py) and what makes a sweep resumable (jobs.py). Hydra reaches
them through the plugins in hydra_plugins/resexp_sweeps/."""
