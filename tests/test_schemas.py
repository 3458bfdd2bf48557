"""One schema per option: a key the chosen option does not read is an error, not silently ignored."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from resexp import evaluate
from resexp.config import compose, conf_dir, saved_config
from resexp.errors import ConfigError
from resexp.schemas import SCHEMAS
from resexp.train import run

PRESETS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))

# (overrides, the error's start): every case that used to compose and run as if the key were not there,
# and at least one per group
FOREIGN = [
    (["optimizer=adam", "optimizer.momentum=0.5"], "optimizer.momentum is not a key of optimizer=adam"),
    (["optimizer=sgd", "optimizer.betas=[0.9,0.99]"], "optimizer.betas is not a key of optimizer=sgd"),
    (["scheduler=cosine", "scheduler.milestones=[30]"], "scheduler.milestones is not a key of scheduler=cosine"),
    (["scheduler=onecycle", "scheduler.warmup_epochs=2"], "scheduler.warmup_epochs is not a key of scheduler=onecycle"),
    (["model=lenet5", "model.stem=cifar"], "model.stem is not a key of model=lenet5"),
    (["model=lenet5", "model.width=2.0"], "model.width is not a key of model=lenet5"),
    (["model=resnet18", "model.batch_norm=true"], "model.batch_norm is not a key of model=resnet18"),
    (["data=cifar10", "data.num_samples=100"], "data.num_samples is not a key of data=cifar10"),
    (["data=digits", "data.root=/data"], "data.root is not a key of data=digits"),
    (["trainer.epoch=3"], "trainer.epoch is not a key of trainer=default"),
]


@pytest.mark.parametrize("overrides, message", FOREIGN)
def test_a_key_the_option_lacks_is_an_error_naming_it(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    text = str(err.value)
    assert text.startswith(message) and "(its keys: " in text and "\n" not in text, text


def test_the_error_lists_the_options_keys():
    with pytest.raises(ConfigError, match=r"^optimizer.momentum is not a key of optimizer=adam \(its keys: name, lr, "
                                          r"weight_decay, .*betas, eps\)$"):
        compose(["optimizer=adam", "optimizer.momentum=0.5"])


@pytest.mark.parametrize("overrides, message", FOREIGN[::3])
def test_the_command_line_prints_one_line_and_exits_2(tmp_path, in_process, capsys, overrides, message):
    code = in_process(tmp_path, *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith(f"error: {message}"), err
    assert not (tmp_path / "run").exists()


def test_a_bad_choice_is_one_line_listing_the_choices(tmp_path, in_process, capsys):
    assert in_process(tmp_path, "data.loader=disk", f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert capsys.readouterr().err.strip() == "error: data.loader=disk is not one of: auto, memory, stream"


@pytest.mark.parametrize("group", ["experiment", "hparams_search"])
def test_an_unknown_preset_is_an_error_not_the_default_run(group):
    # these groups default to null; a misspelt preset must not train the default config instead
    with pytest.raises(ConfigError, match=rf"^Could not find '{group}/typo'; choose one of: .*") as err:
        compose([f"{group}=typo"])
    assert "_schema" not in str(err.value)


def test_a_sweep_over_a_foreign_key_stops_before_the_first_job(tmp_path, in_process, capsys):
    sweep = tmp_path / "sweep"
    code = in_process(tmp_path, "-m", "optimizer=adam", "optimizer.momentum=0.5,0.9", "trainer.epochs=1",
                      f"hydra.sweep.dir={sweep}")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: optimizer.momentum is not a key of optimizer=adam"), err
    assert len(err.strip().splitlines()) == 1
    assert not [p for p in sweep.glob("*") if p.is_dir()]  # no job directory


def test_cfg_job_prints_only_the_options_keys(tmp_path, in_process, capsys):
    assert in_process(tmp_path, "optimizer=adam", "scheduler=onecycle", "model=lenet5", "--cfg", "job") == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert set(cfg["optimizer"]) == {"name", "lr", "weight_decay", "no_decay_norm_bias", "scale_lr_batch", "fused",
                                     "betas", "eps"}
    assert set(cfg["scheduler"]) == {"name", "pct_start", "div_factor", "final_div_factor"}
    assert "stem" not in cfg["model"] and "block" not in cfg["model"] and cfg["model"]["batch_norm"] is False
    assert "num_samples" not in cfg["data"] and "root" not in cfg["data"]  # digits
    assert cfg["trainer"]["precision"] == "32"


# A preset switched to another option on the command line: the preset's keys for the option it chose
# go with that option; a key typed on the command line for the wrong option is still an error.
@pytest.mark.parametrize("switch, group, gone", [
    ("optimizer=adam", "optimizer", {"momentum", "nesterov"}),
    ("scheduler=cosine", "scheduler", {"pct_start", "div_factor", "final_div_factor"}),
    ("model=resnet18", "model", {"batch_norm"}),
])
def test_a_preset_switched_to_another_option_drops_the_old_options_keys(switch, group, gone):
    preset = compose(["experiment=r6_mnist_lenet5_tuned"])
    switched = compose(["experiment=r6_mnist_lenet5_tuned", switch])
    assert gone <= set(preset[group]) and not gone & set(switched[group])
    assert switched.optimizer.lr == preset.optimizer.lr == 0.05  # the keys both options share stay
    assert switched.data == preset.data and switched.trainer == preset.trainer


def test_a_switched_presets_option_is_the_option_its_file_says():
    # the preset's warm-up is its option (cosine_warmup3): scheduler=step gets step.yaml's, whole
    switched = compose(["experiment=cifar10_fast", "scheduler=step", "model=lenet5"])
    assert switched.scheduler == compose(["scheduler=step"]).scheduler and switched.scheduler.warmup_epochs == 0
    assert compose(["experiment=cifar10_fast"]).scheduler.warmup_epochs == 3
    assert "stem" not in switched.model and switched.model == compose(["model=lenet5"]).model
    assert switched.optimizer.scale_lr_batch == 128  # the keys of the group's shared schema stay


def test_a_key_typed_for_the_replaced_option_is_still_an_error():
    with pytest.raises(ConfigError, match="^optimizer.nesterov is not a key of optimizer=adam"):
        compose(["experiment=r6_mnist_lenet5_tuned", "optimizer=adam", "optimizer.nesterov=true"])


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes(name):
    cfg = compose([f"experiment={name}"])
    for group in SCHEMAS:
        assert OmegaConf.get_type(cfg[group]) in SCHEMAS[group].values(), group


def test_a_preset_setting_a_key_its_own_option_lacks_is_an_error_naming_the_file(tmp_path, monkeypatch):
    import shutil

    from resexp import config

    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    (conf / "experiment" / "bad.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /optimizer: adam\n\noptimizer:\n  momentum: 0.9\n")
    monkeypatch.setattr(config, "conf_dir", lambda: conf)
    with pytest.raises(ConfigError, match=r"^optimizer.momentum is not a key of optimizer=adam .*experiment/bad"):
        compose(["experiment=bad"])


# ---------------------------------------------------------------------------------- runs on disk
TINY = ["model=resnet20", "model.stages.depths=[1,1]", "model.stages.widths=[8,16]", "model.stages.strides=[1,2]",
        "data=synthetic", "data.num_samples=96", "data.image_size=8", "data.num_classes=3", "data.batch_size=32",
        "trainer.epochs=1", "trainer.progress=false"]
# keys the old shared schemas gave every option (as runs saved before per-option schemas hold them)
OLD_KEYS = {
    "model": {"batch_norm": False},
    "data": {"root": None, "download": True, "on_bad_file": "error"},
    "optimizer": {"betas": [0.9, 0.999], "eps": 1e-8},
    "scheduler": {"step_size": 30, "gamma": 0.1, "milestones": [], "pct_start": 0.25, "div_factor": 25.0,
                  "final_div_factor": 1e4},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "2026-01-01" / "00-00-00-000001"
    run(compose([*TINY, "trainer.monitor=val_loss", "trainer.precision=bf16"]), run_dir=path)
    return path


def all_strings(node, path=""):
    """Every value in a plain nested structure is a built-in type (an enum would not load weights_only)."""
    if isinstance(node, dict):
        for k, v in node.items():
            all_strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for v in node:
            all_strings(v, path)
    else:
        assert type(node) in (str, int, float, bool, type(None)), (path, type(node))


def test_enums_are_saved_as_plain_strings(run_dir):
    for name in ("best.pt", "last.pt"):
        config = torch.load(run_dir / "checkpoints" / name, weights_only=True)["config"]
        all_strings(config)
        assert config["trainer"]["monitor"] == "val_loss" and config["trainer"]["precision"] == "bf16"
        assert config["model"]["stride_position"] == "first" and config["data"]["augment"]["policy"] == "none"
    card = json.loads((run_dir / "model.json").read_text())
    all_strings(card)
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == "bf16" and saved["trainer"]["compile_mode"] == "default"
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def make_old_style(run_dir: Path) -> None:
    """Write the run's saved configs back as an older resexp saved them: with the shared schemas' keys."""
    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        for group, keys in OLD_KEYS.items():
            state["config"][group].update(keys)
        torch.save(state, path)
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    for group, keys in OLD_KEYS.items():
        saved[group].update(keys)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    card = json.loads((run_dir / "model.json").read_text())
    card["model"].update(OLD_KEYS["model"])
    (run_dir / "model.json").write_text(json.dumps(card))


def test_an_old_style_saved_config_still_evaluates_and_resumes(run_dir, tmp_path, capsys):
    make_old_style(run_dir)
    old = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["config"]
    assert "betas" in old["optimizer"] and "momentum" in saved_config(old)["optimizer"]
    assert "betas" not in saved_config(old)["optimizer"] and "root" not in saved_config(old)["data"]

    out = tmp_path / "eval.json"
    assert evaluate.main([f"run={run_dir}", f"json={out}", "device=cpu"]) == 0
    assert json.loads(out.read_text())["count"] > 0

    from resexp.inference import load_exported

    load_exported(run_dir)  # model.json of an older run, with a resnet holding batch_norm

    # resume=auto matches the old run by its .hydra/config.yaml; trainer.resume= reads its last.pt
    again = run_dir.parent / "00-00-00-000002"
    run(compose([*TINY, "trainer.monitor=val_loss", "trainer.precision=bf16", "trainer.resume=auto",
                 "trainer.epochs=2"]), run_dir=again)
    resumed = json.loads((again / "metrics.json").read_text())["resumed_from"]
    assert resumed.endswith("00-00-00-000001/checkpoints/last.pt")


def test_the_python_api_goes_through_the_same_check():
    from resexp.models import build_model, create

    with pytest.raises(ConfigError, match="^model.stem is not a key of model=lenet5"):
        create("lenet5", num_classes=10, stem="cifar")
    with pytest.raises(ConfigError, match="^model.batch_norm is not a key of model arch=resnet"):
        build_model({"name": "resnet18", "arch": "resnet", "batch_norm": True}, num_classes=10, in_channels=3)
    assert compose(["hparams_search=digits_optuna"]).trainer.epochs == 5


# ------------------------------------------------------------------------ schemas check themselves
@pytest.mark.parametrize("make, message", [
    (lambda s: s.TrainerConfig(epochs=0), "trainer.epochs, trainer.accumulate and trainer.val_every must be >= 1"),
    (lambda s: s.TrainerConfig(ema_decay=1.5), "trainer.ema_decay=1.5 must be between 0 and 1"),
    (lambda s: s.SGDConfig(name="sgd", momentum=0.0, nesterov=True), "optimizer.nesterov=true needs"),
    (lambda s: s.AdamConfig(name="adam", lr=-1.0), "optimizer.lr=-1.0 must be >= 0"),
    (lambda s: s.StepConfig(name="step", step_size=0), "scheduler.step_size must be >= 1"),
    (lambda s: s.DataConfig(name="digits", val_split=1.0), r"data.val_split=1.0 must be in \[0, 1\)"),
    (lambda s: s.DataConfig(name="digits", mean=[0.5]), "data.mean and data.std go together"),
    (lambda s: s.AugmentConfig(random_erasing=2.0), "data.augment.random_erasing=2.0 must be a probability"),
    (lambda s: s.StagesConfig(depths=[1, 1], widths=[8], strides=[1]), "model.stages: depths, widths and strides"),
    (lambda s: s.ResNetConfig(name="x", block=s.BlockConfig("plain_basic"), stages=s.StagesConfig([1], [8], [1]),
                              zero_init_residual=True), "model.zero_init_residual=true needs a residual block"),
    (lambda s: s.BaselineConfig(name="x", arch="lenet5", drop_rate=1.0), r"model.drop_rate must be in \[0, 1\)"),
])
def test_each_schema_checks_its_own_bounds_when_made(make, message):
    from resexp import schemas

    with pytest.raises(ConfigError, match=message):
        make(schemas)


def test_a_composed_config_becomes_checked_objects_once():
    from resexp.config import checked
    from resexp.schemas import AdamConfig, BaselineConfig, RunConfig, TrainerConfig

    cfg = checked(compose(["model=lenet5", "optimizer=adam", "data.image_size=16"]))
    assert isinstance(cfg, RunConfig) and isinstance(cfg.model, BaselineConfig)
    assert isinstance(cfg.optimizer, AdamConfig) and isinstance(cfg.trainer, TrainerConfig)
    with pytest.raises(ConfigError, match=r"^lenet5 needs data.image_size >= 10 \(got 8\)$"):  # across groups
        checked(compose(["model=lenet5", "data.image_size=8"]))


def test_bounds_are_checked_in_the_schemas_only():
    root = Path(__file__).resolve().parent.parent / "resexp"
    for path in ("optim.py", "models/resnet.py", "models/baselines.py", "train/trainer.py"):
        assert "ConfigError" not in (root / path).read_text(), path


def test_the_python_api_builds_from_the_schema_object():
    from resexp.models import create, model_config
    from resexp.schemas import ResNetConfig

    cfg = model_config("resnet18", stem="cifar", stages="r34", width=0.5)
    assert isinstance(cfg, ResNetConfig) and cfg.stem == "cifar" and cfg.stages.depths == [3, 4, 6, 3]
    with pytest.raises(ConfigError, match=r"^model.width: Value 'wide' of type 'str' could not be converted"):
        model_config("resnet18", width="wide")
    # any string reaches the config as it is (the Python API once wrote quoted Hydra overrides)
    from resexp.errors import ResexpError

    weird = "it's \\'quoted\\.pt"
    with pytest.raises(ResexpError, match=f"no such file: {re.escape(weird)}$"):
        create("resnet18", pretrained=weird)
