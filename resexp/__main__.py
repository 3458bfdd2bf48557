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
from resexp.cli import exit_with_error, name_too_long
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
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    "hparams_search=": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
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
    except OSError as e:  # a 20,000-character data.root: one line, not Python's page
        line = name_too_long(e)
        if line is None:
            raise
        exit_with_error(e, line)


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


# Hydra runs one of these modes; two of them stop with a traceback (`-m --cfg job`)
MODES = {"-m": "--multirun", "--multirun": "--multirun", "-r": "--run", "--run": "--run", "-c": "--cfg",
         "--cfg": "--cfg", "-i": "--info", "--info": "--info"}


def check_modes(argv: list[str]) -> None:
    modes = sorted({MODES[a.split("=", 1)[0]] for a in argv if a.split("=", 1)[0] in MODES})
    if len(modes) > 1:
        exit_with_error(ConfigError(
            f"{' and '.join(modes)} cannot be combined: Hydra does one of --run, --multirun, --cfg and --info "
            f"at a time (to see one sweep job's config: --cfg job with that job's values, without -m)"))


def main() -> None:
    check_modes(sys.argv[1:])
    check_plugins(sys.argv[1:])
    sys.argv += ddp_worker_overrides()
    with report_errors(exit_with_error):  # a composition error: one line and exit 2, like any user error
        app()


if __name__ == "__main__":
    main()
