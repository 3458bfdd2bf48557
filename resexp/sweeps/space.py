"""A search space in Hydra's sweep syntax, as Optuna distributions:

    optimizer.lr: tag(log, interval(0.003, 0.3))   -> FloatDistribution(log=True)
    trainer.epochs: int(interval(2, 8))            -> IntDistribution
    model: choice(resnet20, resnet32)              -> CategoricalDistribution
    data.batch_size: range(32, 129, 32)            -> CategoricalDistribution (every value of the range)

and a trial's values back as command-line overrides. Hydra's override parser (public API) reads the
syntax, so the preset and the command line (`'optimizer.lr=interval(0.01,0.1)'`) agree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from resexp.errors import ConfigError, error_line


def parse(params: Mapping[str, object], arguments: Sequence[str]) -> tuple[dict, list[str]]:
    """(distributions by key, the fixed overrides): the preset's params, then the command line's
    arguments (a sweep there joins the space, a plain value is fixed for every trial)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    lines = [f"{k}={_text(v)}" for k, v in (params or {}).items()] + list(arguments)
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except HydraException as e:
        raise ConfigError(f"hydra.sweeper.params: {error_line(e, name=False)}") from None
    space, fixed = {}, []
    for o in overrides:
        if o.is_sweep_override():
            space[o.get_key_element()] = distribution(o)
        else:
            space.pop(o.get_key_element(), None)  # the command line fixes what the preset searched
            fixed.append(o.input_line)
    return space, fixed


def _text(v) -> str:
    if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig":
        return "choice(" + ",".join(map(str, v)) + ")"
    return str(v)


def distribution(o):
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value, key = o.value(), o.get_key_element()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution([v if isinstance(v, (int, float, bool, str)) else str(v)
                                        for v in value.list])
    if isinstance(value, RangeSweep):
        return CategoricalDistribution(list(o.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        ints = all(isinstance(x, int) for x in (value.start, value.end)) and "float" not in value.tags
        if "int" in value.tags or ints:
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"hydra.sweeper.params.{key}: {o.input_line} is not a search range "
                      "(choice(...), range(...) or interval(...), with tag(log, ...) for a log scale)")


def overrides(params: Mapping[str, object]) -> list[str]:
    """A trial's values as overrides, in a fixed order (the same trial gives the same job)."""
    return [f"{k}={_value(v)}" for k, v in sorted(params.items())]


def _value(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def corners(space: Mapping) -> list[dict]:
    """A few points that touch every value a key can take (every choice, both ends of a range):
    composing them checks the space against the schemas before a single trial is created."""
    from optuna.distributions import CategoricalDistribution

    ends = {k: list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high]
            for k, d in space.items()}
    first = {k: v[0] for k, v in ends.items()}
    points = [first]
    for k, values in ends.items():
        points += [{**first, k: v} for v in values[1:]]
    return points


def grid(space: Mapping) -> dict[str, list]:
    """The grid sampler's values: every choice; a numeric interval is not a grid."""
    from optuna.distributions import CategoricalDistribution

    bad = [k for k, d in space.items() if not isinstance(d, CategoricalDistribution)]
    if bad:
        raise ConfigError(f"hydra.sweeper.sampler.name=grid needs choice(...) or range(...) for every key; "
                          f"these are intervals: {', '.join(bad)}")
    return {k: list(d.choices) for k, d in space.items()}
