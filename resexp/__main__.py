"""`python -m resexp [overrides]` (= `resexp [overrides]`): the Hydra app that trains one run,
or one job per combination with `-m` (a failing job is recorded and the sweep goes on: resexp/sweep.py).
`torchrun --nproc_per_node=N -m resexp [overrides]` trains one run with DistributedDataParallel."""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import sys
import tempfile

import hydra
from omegaconf import DictConfig

from resexp import ranks
from resexp.cli import exit_with_error
from resexp.config import conf_dir, report_errors
from resexp.errors import ConfigError, ResexpError
from resexp.runs import is_multirun

# Hydra plugins resexp has configs for: the option users type -> (module, pip extra)
PLUGINS = {
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "hydra/launcher=parallel": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/sweeper=search": ("optuna", "optuna"),
    "hparams_search=": ("optuna", "optuna"),
}


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def app(cfg: DictConfig) -> float:
    from resexp.sweep import BEFORE_TRAINING, INTERRUPTED_EXIT, run_sweep_job
    from resexp.train import run  # imported here so `--cfg job` and `--help` stay fast
    from resexp.train.signals import Interrupted

    if is_multirun():
        return run_sweep_job(cfg, run)

    try:
        return run(cfg)
    except Interrupted as e:  # metrics.json says "interrupted"; 130 as a sweep (and a shell) says it
        exit_with_error(e, code=INTERRUPTED_EXIT)
    except ResexpError as e:
        exit_with_error(e)
    except KeyboardInterrupt as e:  # before training began: nothing of the run was recorded
        exit_with_error(e, BEFORE_TRAINING, code=INTERRUPTED_EXIT)


def check_plugins(argv: list[str]) -> None:
    """A missing Hydra plugin as one line that names the extra to install."""
    for arg in argv:
        for prefix, (module, extra) in PLUGINS.items():
            if arg.lstrip("+~").startswith(prefix) and not arg.endswith("=null"):
                if importlib.util.find_spec(module.split(".")[0]) is None or \
                        importlib.util.find_spec(module) is None:
                    exit_with_error(ConfigError(f"{arg} needs a Hydra plugin: pip install 'resexp[{extra}]'"))


def ddp_worker_overrides() -> list[str]:
    """torchrun starts one copy of this command per process, and Hydra would give each its own
    time-stamped run directory. Ranks > 0 compose in a throwaway directory and write nothing there;
    run() then takes rank 0's run directory (broadcast once the process group is up)."""
    if ranks.world_size() <= 1 or ranks.is_main_process():
        return []
    scratch = tempfile.mkdtemp(prefix=f"resexp-rank{ranks.rank()}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return [f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}", "hydra.output_subdir=null"]


def register_plugins() -> None:
    """resexp's own Hydra plugins (hydra_plugins/resexp_sweeps/), registered by Hydra's public call as
    well: an editable install hides a namespace package's modules from Hydra's scan of hydra_plugins."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.resexp_sweeps.pool_launcher import PoolLauncher
    from hydra_plugins.resexp_sweeps.search_sweeper import SearchSweeper

    for plugin in (PoolLauncher, SearchSweeper):
        Plugins.instance().register(plugin)


def main() -> None:
    check_plugins(sys.argv[1:])
    register_plugins()
    sys.argv += ddp_worker_overrides()
    with report_errors(exit_with_error):  # a composition error: one line and exit 2, like any user error
        app()


if __name__ == "__main__":
    main()
