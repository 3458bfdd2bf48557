"""Hydra's Sweeper interface for resexp's Optuna search (resexp/sweeps/search.py)."""

from __future__ import annotations

from hydra.plugins.sweeper import Sweeper


class SearchSweeper(Sweeper):
    def __init__(self, **given) -> None:
        from resexp.cli import exit_with_error
        from resexp.errors import ConfigError
        from resexp.sweeps.search import Search

        try:
            self.search = Search(given)
        except ConfigError as e:  # a misspelt key in the preset: one line, before any trial exists
            exit_with_error(e)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.config = hydra_context, config  # validate_batch_is_legal composes with them
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from resexp.cli import exit_with_error
        from resexp.errors import ConfigError

        try:
            self.search.prepare(arguments, self.validate_batch_is_legal)
        except ConfigError as e:
            exit_with_error(e)
        self.search.run()
