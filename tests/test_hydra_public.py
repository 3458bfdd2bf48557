"""resexp uses Hydra through its public API only: importing it changes nothing for another Hydra
application in the same process (it once replaced methods of Hydra's config loader)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException

RESEXP = Path(__file__).resolve().parent.parent / "resexp"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_another_hydra_app_composes_as_stock_hydra_after_importing_resexp(tmp_path):
    import resexp  # noqa: F401
    import resexp.__main__  # noqa: F401
    import resexp.config  # noqa: F401
    import resexp.data  # noqa: F401
    import resexp.models  # noqa: F401
    from resexp.config import VERSION_BASE

    conf = tmp_path / "conf"
    write(conf / "config.yaml", "defaults:\n  - db: sqlite\n  - _self_\n  - experiment: null\n")
    write(conf / "db" / "mysql.yaml", "driver: mysql\nport: 3306\n")
    write(conf / "db" / "sqlite.yaml", "driver: sqlite\n")
    # a preset setting a key for the option it chose, then replaced on the command line
    write(conf / "experiment" / "fast.yaml", "# @package _global_\ndefaults:\n  - override /db: mysql\n\n"
                                             "db:\n  port: 1\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), **VERSION_BASE):
        assert compose("config", ["experiment=fast"]).db == {"driver": "mysql", "port": 1}
        # stock Hydra merges the preset's key into the option chosen instead (resexp once dropped it)
        assert compose("config", ["experiment=fast", "db=sqlite"]).db == {"driver": "sqlite", "port": 1}
        with pytest.raises(ConfigCompositionException) as err:
            compose("config", ["db.nope=1"])
        assert type(err.value) is ConfigCompositionException  # Hydra's own error, not resexp's one line
        assert str(err.value).startswith("Could not override 'db.nope'")
    GlobalHydra.instance().clear()


def test_no_method_of_hydra_or_omegaconf_comes_from_resexp():
    import resexp.config  # noqa: F401
    import resexp.models  # noqa: F401

    for module in [m for name, m in sys.modules.items() if name.split(".")[0] in ("hydra", "omegaconf")]:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__:  # defined there
                for name, attr in vars(cls).items():
                    func = getattr(attr, "__func__", attr)
                    if inspect.isfunction(func):
                        assert not (func.__module__ or "").startswith("resexp"), (cls, name, func.__module__)


def test_resexp_imports_nothing_private_of_hydra():
    for path in RESEXP.rglob("*.py"):
        assert "hydra._internal" not in path.read_text(), path
