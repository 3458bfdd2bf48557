"""`python -m resexp [overrides]` (= `resexp [overrides]`): the Hydra app that trains one run,
or one job per combination with `-m` (a failing job is recorded and the sweep goes on:
resexp/sweeps/multirun.py).
`torchrun --nproc_per_node=N -m resexp [overrides]` trains one run with DistributedDataParallel."""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import hydra
from omegaconf import DictConfig

from resexp import ranks
from resexp.cli import FULL_ERROR, USER_FULL_ERROR, environ, exit_quickly, exit_with_error, full_error, name_too_long
from resexp.config import COMPOSITION_ERRORS, VERSION_BASE, conf_dir, config_error
from resexp.errors import ConfigError, ResexpError
from resexp.run_dir import is_multirun

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


@hydra.main(config_path=str(conf_dir()), config_name="config", **VERSION_BASE)
def app(cfg: DictConfig) -> float:
    from resexp.sweeps.multirun import BEFORE_TRAINING, INTERRUPTED_EXIT, run_sweep_job
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


# Hydra's flags that take a value (`--cfg job`); every other argument that is not a flag is an override
VALUED_FLAGS = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd",
                "--config-dir", "--experimental-rerun"}


def overrides_in(argv: list[str]) -> list[str]:
    """The overrides of a command line, without Hydra's flags and their values."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in VALUED_FLAGS
        else:
            out.append(arg)
    return out


@contextmanager
def errors_come_back() -> Iterator[None]:
    """Hydra prints a composition error itself (several lines, exit 1) unless HYDRA_FULL_ERROR=1, when
    it raises it: set it for Hydra, so that main() can print the one line. What the user set is kept
    in USER_FULL_ERROR for resexp's own errors (cli.full_error), here and in launcher processes."""
    with environ({USER_FULL_ERROR: "1" if full_error() else "0", FULL_ERROR: "1"}):
        yield


def trusted_targets() -> AbstractContextManager:
    """Hydra 1.4 asks which `_target_`s a config may instantiate (it warns, and 1.5 will refuse, for
    any other): resexp's own, the callbacks of conf/config.yaml. Hydra 1.3 instantiates any."""
    try:
        from hydra.utils import execution_whitelist
    except ImportError:
        return nullcontext()
    return execution_whitelist(["resexp.*", "hydra_plugins.resexp_sweeps.*"])


# Hydra runs one of these modes; two of them stop with a traceback (`-m --cfg job`)
MODES = {"-m": "--multirun", "--multirun": "--multirun", "-r": "--run", "--run": "--run", "-c": "--cfg",
         "--cfg": "--cfg", "-i": "--info", "--info": "--info"}


def check_modes(argv: list[str]) -> None:
    modes = sorted({MODES[a.split("=", 1)[0]] for a in argv if a.split("=", 1)[0] in MODES})
    if len(modes) > 1:
        exit_with_error(ConfigError(
            f"{' and '.join(modes)} cannot be combined: Hydra does one of --run, --multirun, --cfg and --info "
            f"at a time (to see one sweep job's config: --cfg job with that job's values, without -m)"))


def register_plugins() -> None:
    """resexp's own Hydra plugins (hydra_plugins/resexp_sweeps/), registered by Hydra's public call as
    well: an editable install hides a namespace package's modules from Hydra's scan of hydra_plugins."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.resexp_sweeps.pool_launcher import PoolLauncher
    from hydra_plugins.resexp_sweeps.search_sweeper import SearchSweeper

    for plugin in (PoolLauncher, SearchSweeper):
        Plugins.instance().register(plugin)


def main() -> None:
    exit_quickly()
    argv = sys.argv[1:]
    check_modes(argv)
    check_plugins(argv)
    register_plugins()
    sys.argv += ddp_worker_overrides()
    if full_error() or {"-sc", "--shell-completion"} & {a.split("=")[0] for a in argv}:
        with trusted_targets():
            app()  # the traceback asked for; or completing a command line, where Hydra expects the errors
        return
    config_name = next((v for f, v in zip(argv, argv[1:], strict=False) if f in ("-cn", "--config-name")), "config")
    try:
        with errors_come_back(), trusted_targets():
            app()
    except COMPOSITION_ERRORS as e:  # a composition error: one line and exit 2, like any user error
        error = config_error(e, overrides_in(sys.argv[1:]), config_name)
        if error is None:
            raise
        exit_with_error(error)
    except ResexpError as e:  # raised by a Hydra callback (the run directory's)
        exit_with_error(e)


if __name__ == "__main__":
    main()
