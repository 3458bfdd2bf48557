"""Which config keys a run shows as hyperparameters (TensorBoard's HParams dashboard): the keys that
say how this run differs, not all ~60 of them (the whole config is on TensorBoard's Text page and in
.hydra/config.yaml).

Shown: every key set away from the default composition (`python -m resexp` with no overrides; for a
command line that chooses no group option, that is its own keys, without composing again), every
key named on the run's command line (so a sweep's keys are columns for all its jobs, also the job
whose value is the default), and the few keys every comparison needs (`ALWAYS`); not the keys that
leave the numbers alone (device, workers, logging: continuation.NOT_THE_NUMBERS). TensorBoard lists
the keys whose values differ across the runs shown first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import OmegaConf

from resexp.config import compose, conf_dir, leaves, to_plain
from resexp.train.continuation import NOT_THE_NUMBERS, listed

ALWAYS = ("model.name", "data.name", "optimizer.name", "optimizer.lr", "data.batch_size", "trainer.epochs", "seed")


def flatten(config: dict) -> dict:
    """The config's leaves by dotted key, as values TensorBoard takes (int, float, str, bool; others as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in leaves(config).items()}


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The config keys command-line overrides set: `optimizer.lr=0.1` -> optimizer.lr, a group choice
    `model=resnet18` -> model.name, `model/block=plain_basic` -> model.block.name."""
    keys = set()
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        keys.add(key if "." in key else key.replace("/", ".") + ".name")
    return keys


def default_composition(config: dict, overrides: list[str], run_dir: Path) -> dict:
    """What `python -m resexp` with no overrides composes, to compare `config` with. For Hydra's own job
    in `run_dir` (not a Python caller's run after an earlier Hydra job in the process) on resexp's own
    config tree whose overrides choose no config group option (`model=...`, `experiment=...`), it is
    `config` itself: such a run differs from the defaults at its override keys, which are shown anyway
    (not at keys that interpolate them). Composing again cost the default job ~0.5 s of its ~20."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and not any(chooses_option(o) for o in overrides):
        hydra = HydraConfig.get()
        providers = {source.provider for source in hydra.runtime.config_sources}
        output_dir = OmegaConf.select(hydra, "runtime.output_dir")  # None: no Hydra job ran (only a compose)
        if hydra.job.config_name == "config" and providers <= {"hydra", "main", "schema"} \
                and output_dir is not None and Path(output_dir).resolve() == run_dir.resolve():
            return config
    return to_plain(compose())


def chooses_option(override: str) -> bool:
    """`model=resnet18`, `model/block=plain_basic`, `+experiment=x`: a config group's option, which
    changes more keys than it names."""
    return (conf_dir() / override.lstrip("+~").split("=", 1)[0]).is_dir()


def shown_hparams(config: dict, defaults: dict, overrides: Iterable[str] = ()) -> dict:
    """The flat `config` restricted to the keys that matter (see the module's docstring); `defaults`
    is the default composition."""
    params, default = flatten(config), flatten(defaults)
    keep = {k for k, v in params.items() if k not in default or default[k] != v}
    keep |= override_keys(overrides) | set(ALWAYS)
    return {k: v for k, v in sorted(params.items()) if k in keep and not listed(k, NOT_THE_NUMBERS)}
