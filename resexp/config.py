"""Configs as plain data and as Hydra composes them: `compose` (the Python API), a saved config read
leniently (`saved_config`), one group's node checked against its option's schema (`typed`), and
composition errors as one line (Hydra's config loader is wrapped: see "composition" below).
The schemas themselves are resexp/schemas.py.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

from hydra.core.default_element import GroupDefault
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from resexp.errors import ConfigError
from resexp.schemas import SCHEMAS, SELECTORS, Choice, RunConfig


# ------------------------------------------------------------------------------ plain configs
def schema_of(group: str, node: Mapping) -> type:
    """The schema of one group's config given as a plain mapping (a saved config, the Python API):
    picked by its name (models: its arch); the group's base schema for a name without one."""
    base = get_type_hints(RunConfig)[group]
    key = SELECTORS.get(group, "name")
    return SCHEMAS.get(group, {}).get(node.get(key, getattr(base, key, None)), base)


def typed(group: str, node: Mapping) -> DictConfig:
    """`node` checked against its schema: defaults filled in, types and keys checked."""
    schema = schema_of(group, node)
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as e:
        selector = SELECTORS.get(group, "name")
        value = node.get(selector, getattr(schema, selector, None))
        if value not in SCHEMAS.get(group, {}):  # the name is the mistake, not the keys
            known = ", ".join(SCHEMAS[group])
            raise ConfigError(f"unknown {group}.{selector} '{value}'; choose one of: {known}") from None
        raise ConfigError(one_line(e, prefix=f"{group}.", owner=f"{group} {selector}={value}")) from None


def known_keys(group: str, node: Mapping) -> dict:
    """`node` without the keys its option's schema lacks."""
    keys = {f.name for f in fields(schema_of(group, node))}
    return {k: v for k, v in node.items() if k in keys}


def saved_config(config: Mapping) -> dict:
    """A run's saved config, read leniently: runs saved before each option had its own schema hold
    every key of the group's old shared one (an adam run has `momentum`). Those keys are dropped, so
    old runs still resume, evaluate, predict and fine-tune."""
    return {k: known_keys(k, v) if k in SCHEMAS and isinstance(v, Mapping) else v for k, v in config.items()}


def leaves(config: Mapping, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}. An empty section is a leaf ({}), so an option without keys of
    its own (`logger.tensorboard`) is still there."""
    out = {}
    for k, v in config.items():
        if isinstance(v, Mapping) and v:
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_plain(cfg: Any) -> dict:
    """A resolved config as plain Python values (what checkpoints and JSON files store): enums as strings."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def conf_dir() -> Path:
    """The config tree: inside the installed package, or the checkout's top-level conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"resexp's conf/ directory is missing (looked in {here} and {here.parent})")


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """Compose the run config as the command line would (Python API; works inside a Hydra app too).
    A bad key or value raises ConfigError with the command line's one-line message."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


# ------------------------------------------------------------------------------- composition
# Hydra has no public hook into composition, so two methods of its config loader are wrapped (at
# import, so that launcher worker processes, which import resexp to unpickle the task, get them too):
# - _compose_config_from_defaults_list: drops the keys a preset set for an option it chose and the
#   command line replaced (`experiment=r6_mnist_lenet5_tuned optimizer=adam`: the preset's sgd keys
#   momentum/nesterov go with sgd). A key typed on the command line is still checked strictly.
# - load_configuration: every composition error becomes a one-line ConfigError.
# - _apply_overrides_to_config: a key set under a null node (logger.mlflow.experiment=x while
#   logger=mlflow is not chosen) names that node; OmegaConf would fail with a bare AssertionError.
from hydra._internal.config_loader_impl import ConfigLoaderImpl  # noqa: E402

_hydra_compose = ConfigLoaderImpl._compose_config_from_defaults_list
_hydra_load = ConfigLoaderImpl.load_configuration
_hydra_apply = ConfigLoaderImpl._apply_overrides_to_config
_choices: dict[str, str] = {}  # package -> option of the latest composition, for the error message
_report: list[Callable[[ConfigError], None]] = []  # set by report_errors()


def _compose_config_from_defaults_list(self, defaults, repo):
    chosen, schemas = {}, {}
    for d in defaults:
        group, _, option = (d.config_path or "").rpartition("/")
        if d.package != group.replace("/", "."):
            continue
        if option.endswith("_schema") and group in SCHEMAS:
            schemas[group] = SCHEMAS[group].get(option.removesuffix("_schema"))
        elif not option.endswith("_schema"):
            chosen[d.package] = option
    _choices.clear()
    _choices.update(chosen)
    load = self._load_single_config

    def load_without_replaced(default, repo):
        loaded = load(default=default, repo=repo)
        preset = {d.group.lstrip("/"): d.value for d in loaded.defaults_list or () if isinstance(d, GroupDefault)}
        replaced = [g for g, option in preset.items() if schemas.get(g) and chosen.get(g) != option
                    and isinstance(loaded.config.get(g), DictConfig)]
        if replaced:
            loaded = copy.deepcopy(loaded)  # the repository caches what it loaded
            for group in replaced:
                keys = {f.name for f in fields(schemas[group])}
                node = loaded.config[group]
                for key in [k for k in node if k not in keys]:
                    del node[key]
        return loaded

    self._load_single_config = load_without_replaced
    try:
        return _hydra_compose(self, defaults, repo)
    finally:
        del self._load_single_config


class CompositionError(ConfigError, ConfigCompositionException):
    """A composition error in one line; still a ConfigCompositionException for Hydra's own callers."""


def _load_configuration(self, *args, **kwargs):
    try:
        return _hydra_load(self, *args, **kwargs)
    except (ConfigCompositionException, OmegaConfBaseException, OverrideParseException) as e:
        error = CompositionError(one_line(e))
        error.__cause__ = e  # before reporting: HYDRA_FULL_ERROR=1 shows Hydra's own error below the line
        for report in _report:
            report(error)
        raise error from e


def _apply_overrides_to_config(overrides, cfg) -> None:
    for override in overrides:
        parts = override.key_or_group.split(".")
        for i in range(1, len(parts)):
            node = ".".join(parts[:i])
            if OmegaConf.select(cfg, node, default=0) is None:
                group, _, option = node.rpartition(".")
                hint = f"; choose it: {group}={option}, or with others: {group}=[...,{option}]" \
                    if group and (conf_dir() / group / f"{option}.yaml").is_file() else ""
                raise ConfigCompositionException(f"{override.input_line}: {node} is null in this config{hint}")
    _hydra_apply(overrides, cfg)


ConfigLoaderImpl._compose_config_from_defaults_list = _compose_config_from_defaults_list
ConfigLoaderImpl._apply_overrides_to_config = staticmethod(_apply_overrides_to_config)
ConfigLoaderImpl.load_configuration = _load_configuration


@contextmanager
def report_errors(report: Callable[[ConfigError], None]) -> Iterator[None]:
    """Within: a composition error goes to `report` (the CLI: one line, exit 2) where it is raised,
    since the Hydra app around it would catch it and print its own multi-line message instead."""
    if {"-sc", "--shell-completion"} & {a.split("=")[0] for a in sys.argv}:
        yield  # completing a partial command line: Hydra expects the errors, and ignores them
        return
    _report.append(report)
    try:
        yield
    finally:
        _report.remove(report)


def one_line(e: BaseException, prefix: str = "", owner: str | None = None) -> str:
    """A composition error as one line that names the key (and for an unknown key, the valid ones).
    `prefix`, `owner`: for a group's node checked on its own (`typed`)."""
    text = str(e)
    where = re.match(r"In '([^']+)'", text)
    origin = f" (set in {where[1]})" if where else ""
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key and \
            isinstance(cause.object_type, type) and hasattr(cause.object_type, "__dataclass_fields__"):
        path = cause.full_key.rpartition(".")[0]
        if owner is None or path:
            owner = f"{path.replace('.', '/')}={_choices[path]}" if path in _choices else prefix + path
        keys = ", ".join(f.name for f in fields(cause.object_type))
        return f"{prefix}{cause.full_key} is not a key of {owner} (its keys: {keys}){origin}"
    if cause is not None and cause.full_key:
        hint = get_type_hints(cause.object_type).get(str(cause.key)) if hasattr(
            cause.object_type, "__dataclass_fields__") else None
        if isinstance(hint, type) and issubclass(hint, Choice):
            return f"{prefix}{cause.full_key}={cause.value} is not one of: {', '.join(hint._value2member_map_)}{origin}"
        return f"{prefix}{cause.full_key}: {str(cause.msg).splitlines()[0]}{origin}"
    if isinstance(e, OverrideParseException):  # the lexer's message is 4 lines with a caret
        return (f"cannot read the override {e.override!r}: quote a value that has characters other than ASCII "
                f"letters, digits and _-+./:@ in it, e.g. '{e.override.split('=', 1)[0]}=\"...\"' in the shell")
    if isinstance(e, MissingConfigException) and e.options:
        first = re.sub(r"^In '[^']*': ", "", text.splitlines()[0])
        return f"{first}; choose one of: {', '.join(o for o in e.options if not o.endswith('_schema'))}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
