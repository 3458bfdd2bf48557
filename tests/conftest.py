"""Shared test settings.

The tests train tiny networks on tiny batches, where a second intra-op thread buys nothing and
costs a lot whenever the two cores are shared (OpenMP threads wait for each other at every op).
One thread, set before torch is imported so subprocesses inherit it too. The default-job test
drops it again, to time what a user gets.
"""

import logging
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def in_process(monkeypatch):
    """`python -m resexp ARGS` in cwd, inside the test process (no interpreter start-up; `run` can be
    replaced): `in_process(cwd, *args)` returns the exit code."""
    from hydra.core.global_hydra import GlobalHydra

    import resexp.__main__ as cli

    def call(cwd, *args: str) -> int:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["resexp", *args])
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        GlobalHydra.instance().clear()
        try:
            cli.main()
            return 0
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
            for h in root.handlers[:]:
                if h not in handlers:
                    root.removeHandler(h)
                    h.close()
            root.setLevel(level)

    return call
