"""Shared test settings.

The tests train tiny networks on tiny batches, where a second intra-op thread buys nothing and
costs a lot whenever the two cores are shared (OpenMP threads wait for each other at every op).
One thread, set before torch is imported so subprocesses inherit it too. The default-job test
drops it again, to time what a user gets.

The suite runs in one process per core (pytest-xdist, `-n auto` in pyproject.toml); a test marked
`alone` (one that times itself) waits until no other test runs and keeps the others waiting.
"""

import fcntl
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# resexp's caches (the image folders' bad-file check, shard hashes) go to a folder of this test process,
# not to the user's ~/.cache
os.environ["RESEXP_CACHE"] = tempfile.mkdtemp(prefix="resexp-test-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _cpu_share(request, tmp_path_factory):
    """Every test holds a shared lock while it runs, a test marked `alone` an exclusive one. The gate,
    held by an `alone` test while it waits, keeps new tests from starting, so it is never starved."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: tests run one at a time anyway
        yield
        return
    root = tmp_path_factory.getbasetemp().parent  # the session's folder, above each worker's own
    alone = request.node.get_closest_marker("alone") is not None
    with open(root / "cpu.gate", "a") as gate, open(root / "cpu.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


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


# The real MNIST / Fashion-MNIST files, as distributed (.gz), beside the project (a user's clone has none).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_SETS = {"MNIST/raw": "mnist", "FashionMNIST/raw": "fashion-mnist"}


@pytest.fixture(scope="session")
def real_data_root(tmp_path_factory) -> Path:
    """A data root with MNIST/raw and FashionMNIST/raw: $RESEXP_DATA when it has them (.ci/run lays it
    out from ../shared/data), else a temporary copy of ../shared/data; skips when neither exists."""
    from resexp.data import DATASETS

    def complete(root: Path) -> bool:
        return all(DATASETS.get(n)._present(root) for n in ("mnist", "fashion_mnist"))

    env = os.environ.get("RESEXP_DATA")
    if env and complete(Path(env)):
        return Path(env)
    if not all((SHARED_DATA / src).is_dir() for src in REAL_SETS.values()):
        pytest.skip(f"real MNIST / Fashion-MNIST files not found: neither $RESEXP_DATA ({env or 'unset'}) "
                    f"nor {SHARED_DATA} holds them")
    root = tmp_path_factory.mktemp("real_data")
    for folder, src in REAL_SETS.items():
        (root / folder).mkdir(parents=True)
        for f in (SHARED_DATA / src).glob("*.gz"):
            shutil.copyfile(f, root / folder / f.name)  # as a user copies them: writable, no read-only modes
    return root
