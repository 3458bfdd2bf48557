"""`python -m resexp [overrides]` (= `resexp [overrides]`): the Hydra app that trains one run,
or one job per combination with `-m`."""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from resexp.config import conf_dir
from resexp.errors import ResexpError


def user_error(e: ResexpError) -> None:
    """One line on stderr and exit 2; `HYDRA_FULL_ERROR=1` shows the traceback instead."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise e
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def app(cfg: DictConfig) -> float:
    from resexp.train import run  # imported here so `--cfg job` and `--help` stay fast

    try:
        return run(cfg)
    except ResexpError as e:
        user_error(e)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
