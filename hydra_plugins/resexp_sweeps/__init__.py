"""resexp's Hydra plugins: the pool launcher (`hydra/launcher=pool`) and the Optuna search sweeper
(`hparams_search=<preset>`). Hydra imports this package when it starts: the logic lives in
resexp/sweeps/, imported when a plugin is used."""
