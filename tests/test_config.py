"""The config tree: every option composes into the typed schema; bad values fail early and by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from resexp.config import compose, conf_dir
from resexp.errors import ConfigError
from resexp.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from resexp.registry import Registry


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def test_default_config_composes():
    cfg = compose()
    assert cfg.model.name == "resnet20" and cfg.data.name == "digits"
    assert cfg.model.num_classes is None  # filled from the data set at run time


@pytest.mark.parametrize("override, key", [("trainer.epoch=3", "trainer.epoch"),
                                           ("model.blok.name=basic", "model.blok"),
                                           ("trainer.epochs=ten", "trainer.epochs"),
                                           ("optimizer.lr=fast", "optimizer.lr")])
def test_typos_and_wrong_types_name_the_full_key(override, key):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as err:
        compose([override])
    assert key in str(err.value) + str(err.value.__cause__)


def test_an_unknown_group_option_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException, match="resnet18"):
        compose(["model=resnet7"])


def test_a_yaml_typo_is_caught_by_the_schema(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    import shutil

    shutil.copytree(conf_dir(), conf)
    (conf / "trainer" / "typo.yaml").write_text("epochz: 3\n")
    monkeypatch.setattr("resexp.config.conf_dir", lambda: conf)
    with pytest.raises(ConfigCompositionException) as err:
        compose(["trainer=typo"])
    assert "epochz" in str(err.value) + str(err.value.__cause__)


def test_registry_lists_valid_names_on_unknown():
    reg: Registry = Registry("widget")
    reg.register("a")(object)
    with pytest.raises(ConfigError, match="unknown widget 'b'; choose one of: a"):
        reg.get("b")
    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(object)


def test_user_configs_hold_no_callables():
    """A config is data: no `_target_` outside Hydra's own settings (launchers, callbacks)."""
    from omegaconf import OmegaConf

    for path in conf_dir().rglob("*.yaml"):
        if "hydra" in path.relative_to(conf_dir()).parts:
            continue
        node = OmegaConf.load(path)
        node.pop("hydra", None)
        assert "_target_" not in OmegaConf.to_yaml(node), path


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_optimizer_and_schedule_builds_and_steps(optimizer, scheduler):
    cfg = compose([f"optimizer={optimizer}", f"scheduler={scheduler}"])
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, cfg.optimizer, batch_size=8, device=torch.device("cpu"))
    sched = build_scheduler(opt, cfg.scheduler, epochs=3, steps_per_epoch=4)
    for _ in range(12):
        opt.step()
        sched.step()
    assert all(g["lr"] >= 0 for g in opt.param_groups)
    assert cfg.optimizer.name in OPTIMIZERS and cfg.scheduler.name in SCHEDULERS


def test_seed_schedules_follow_the_seeds_rules():
    model = torch.nn.Linear(1, 1)

    def lrs(scheduler: str) -> list[float]:
        cfg = compose(["optimizer=adam", "optimizer.lr=1.0", f"scheduler={scheduler}"])
        opt = build_optimizer(model, cfg.optimizer, batch_size=1, device=torch.device("cpu"))
        sched = build_scheduler(opt, cfg.scheduler, epochs=10, steps_per_epoch=2)
        out = []
        for _ in range(10):  # one value per epoch
            out.append(opt.param_groups[0]["lr"])
            for _ in range(2):
                opt.step()
                sched.step()
        return out

    assert lrs("inverse_epoch") == pytest.approx([1 / (e + 1) for e in range(10)])
    assert lrs("step_092") == pytest.approx([0.92 ** (e // 4) for e in range(10)])


def test_lr_scaling_and_no_decay_groups():
    cfg = compose(["optimizer=adamw", "optimizer.scale_lr_batch=256", "optimizer.lr=0.001"])
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    opt = build_optimizer(model, cfg.optimizer, batch_size=1024, device=torch.device("cpu"))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.004)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert len(opt.param_groups[1]["params"]) == 3  # linear bias, BN weight and bias


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_are_fused_on_cpu_by_default_with_the_loops_weights_up_to_rounding(optimizer):
    def built(*overrides: str, seed: int = 0):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
        cfg = compose([f"optimizer={optimizer}", *overrides])
        return model, build_optimizer(model, cfg.optimizer, batch_size=8, device=torch.device("cpu"))

    def train(model, opt, steps: int = 5):
        torch.manual_seed(1)
        for _ in range(steps):
            torch.nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
            opt.step()
            opt.zero_grad()
        return [p.detach() for p in model.parameters()]

    fused, plain = built(), built("optimizer.fused=false")
    assert fused[1].defaults["fused"] is True and not plain[1].defaults.get("fused")
    weights = train(*fused), train(*plain)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*weights, strict=True))  # the same up to rounding


def test_conf_ships_in_the_wheel_build(tmp_path):
    """setup.py copies conf/ into the package so a non-editable install composes too."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(repo)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import zipfile

    (wheel,) = tmp_path.glob("resexp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "resexp/conf/config.yaml" in names and "resexp/conf/model/resnet20.yaml" in names
