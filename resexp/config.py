"""Configs as plain data and as Hydra composes them: `compose` (the Python API), a saved config read
leniently (`saved_config`), one group's node checked against its option's schema (`typed`), and
composition errors as one message (`config_error`, from the exceptions Hydra and OmegaConf raise).
The schemas themselves are resexp/schemas.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

import hydra
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from resexp.errors import ConfigError, error_line
from resexp.schemas import SCHEMAS, SELECTORS, Choice, RunConfig


# ------------------------------------------------------------------------------ plain configs
def schema_of(group: str, node: Mapping) -> type:
    """The schema of one group's config given as a plain mapping (a saved config, the Python API):
    picked by its name (models: its arch); the group's base schema for a name without one."""
    base = get_type_hints(RunConfig)[group]
    key = SELECTORS.get(group, "name")
    return SCHEMAS.get(group, {}).get(node.get(key, getattr(base, key, None)), base)


def checked(cfg: DictConfig) -> Any:
    """A typed config as the schemas' objects (RunConfig for a run's config), which check their own
    bounds and cross-key rules as they are made (resexp/schemas.py). A run does this once, first."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(composition_message(e)) from None


def check(node: DictConfig) -> DictConfig:
    """`node` (one group's typed config) after its schema's checks; a required value still missing
    (`???`) is left for the caller to name."""
    try:
        OmegaConf.to_object(node)
    except MissingMandatoryValue:
        pass
    return node


def typed(group: str, node: Mapping) -> DictConfig:
    """`node` checked against its schema: defaults filled in, types, keys and bounds checked."""
    schema = schema_of(group, node)
    try:
        return check(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as e:
        selector = SELECTORS.get(group, "name")
        value = node.get(selector, getattr(schema, selector, None))
        if value not in SCHEMAS.get(group, {}):  # the name is the mistake, not the keys
            known = ", ".join(SCHEMAS[group])
            raise ConfigError(f"unknown {group}.{selector} '{value}'; choose one of: {known}") from None
        raise ConfigError(composition_message(e, prefix=f"{group}.", owner=f"{group} {selector}={value}")) from None


def overridden(group: str, node: Mapping, overrides: Sequence[str] = ()) -> DictConfig:
    """`node` (one group's plain config) with the commands' `<group>.key=value` overrides (values typed
    as YAML, resexp.cli), then `typed`: a bad key or value is one line naming it and the option's keys."""
    dotlist = [o.partition(".")[2] for o in overrides]
    if dotlist:
        try:
            node = OmegaConf.to_container(OmegaConf.merge(dict(node), OmegaConf.from_dotlist(dotlist)))
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override ({', '.join(overrides)}): {error_line(e, name=False)}") from None
    return typed(group, node)


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


# Hydra 1.3 warns when version_base is not given, 1.4 when it is (deprecated: 1.4's behaviour is the one)
VERSION_BASE: dict[str, Any] = {} if tuple(map(int, hydra.__version__.split(".")[:2])) >= (1, 4) \
    else {"version_base": "1.3"}


def conf_dir() -> Path:
    """The config tree: inside the installed package, or the checkout's top-level conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"resexp's conf/ directory is missing (looked in {here} and {here.parent})")


# ------------------------------------------------------------------------------- composition
# Hydra composes through its public API only. A preset's values for one option are an option of its
# own (conf/optimizer/sgd_nesterov.yaml), so choosing another option on the command line replaces the
# whole node; Hydra's and OmegaConf's own exceptions become one line here (`config_error`).
COMPOSITION_ERRORS = (HydraException, OmegaConfBaseException, AssertionError)


class CompositionError(ConfigError, ConfigCompositionException):
    """A composition error in one line; still a ConfigCompositionException for Hydra's own callers."""


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """Compose the run config as the command line would (Python API; works inside a Hydra app too).
    A bad key or value raises ConfigError with the command line's one-line message."""
    from hydra import compose as hydra_compose

    with _hydra():
        try:
            return hydra_compose(config_name=config_name, overrides=list(overrides))
        except COMPOSITION_ERRORS as e:
            error = config_error(e, overrides, config_name)
            if error is None:
                raise
            raise error from e


@contextmanager
def _hydra() -> Iterator[None]:
    """Hydra initialised on resexp's conf/ for the block; an outer Hydra app's state is put back."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), **VERSION_BASE):
            yield
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def config_error(e: BaseException, overrides: Sequence[str], config_name: str = "config") -> ConfigError | None:
    """The exception Hydra or OmegaConf raised while composing `overrides`, as a one-line ConfigError;
    None for an AssertionError that is not OmegaConf's on a null node (a bug: let it through)."""
    choices = _choices(overrides, config_name)
    line = _null_node(overrides, choices)
    if line is None and isinstance(e, AssertionError):
        return None
    error = CompositionError(line or composition_message(e, choices=choices, swept=_swept(overrides)))
    error.__cause__ = e  # HYDRA_FULL_ERROR=1 shows Hydra's own error below the line
    return error


def _swept(overrides: Sequence[str]) -> set[str]:
    """The groups a multirun sweeps (`optimizer=sgd,adam`, `model=choice(...)`): their option differs
    from job to job (`logger=[tensorboard,mlflow]` is one choice of two options, not a sweep)."""
    out = set()
    for override in overrides:
        key, _, value = override.partition("=")
        listed = value.startswith("[") and value.endswith("]")
        if "." not in key and ("," in value and not listed or re.match(r"\w+\(", value)):
            out.add(key.lstrip("+~"))
    return out


def _choices(overrides: Sequence[str], config_name: str) -> dict[str, Any]:
    """{group: option} as the defaults list picks them (no config is merged, so this works where
    composition failed); {} where even the defaults list cannot be built."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    swept = _swept(overrides)
    fixed = [o for o in overrides if "." not in (key := o.partition("=")[0]) and key.lstrip("+~") not in swept]
    try:
        with _hydra():
            loader = GlobalHydra.instance().config_loader()
            return dict(loader.compute_defaults_list(config_name, fixed, RunMode.RUN).overrides.known_choices)
    except Exception:  # noqa: BLE001 - the message then names the option by its `name` key
        return {}


def _null_node(overrides: Sequence[str], choices: Mapping[str, Any]) -> str | None:
    """`logger.mlflow.experiment=x` while logger=mlflow is not chosen: the node is null, and
    OmegaConf fails with a bare AssertionError; name the node and how to choose it."""
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        parts = key.split(".")
        for i in range(1, len(parts) - 1):
            group, option = "/".join(parts[:i]), parts[i]
            chosen = choices.get(group)
            chosen = chosen if isinstance(chosen, list) else [chosen]
            if option not in chosen and (conf_dir() / group / f"{option}.yaml").is_file():
                node = ".".join(parts[: i + 1])
                return (f"{override}: {node} is null in this config; choose it: {group}={option}, "
                        f"or with others: {group}=[...,{option}]")
    return None


def composition_message(e: BaseException, prefix: str = "", owner: str | None = None,
                        choices: Mapping[str, Any] | None = None, swept: set[str] = frozenset()) -> str:
    """What Hydra or OmegaConf raised, as the message a user needs: the key named (for an unknown key,
    the option's valid keys), in one line (resexp.cli prints it as every other error).
    `prefix`, `owner`: for a group's node checked on its own (`typed`); `choices`: {group: option}."""
    choices = choices or {}
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
            owner = _owner(path, cause, choices, swept) if path in SCHEMAS or path.replace(".", "/") in choices \
                else prefix + path or "the run config"
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


def _owner(path: str, cause: OmegaConfBaseException, choices: Mapping[str, Any], swept: set[str]) -> str:
    """`optimizer=adam`: the group's chosen option; in a sweep over the group, the failing node's name."""
    group = path.replace(".", "/")
    option = choices.get(group)
    if group in swept or not isinstance(option, str):
        node = getattr(cause, "parent_node", None)
        option = node.get("name") if isinstance(node, DictConfig) and node.get("name") else option
    return f"{group}={option}"
