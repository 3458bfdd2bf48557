"""`python -m resexp.summary [overrides]`: the configured model's layer table and parameter counts,
without training (the same text as a run's model_summary.txt). The same overrides as
`python -m resexp`, e.g.

    python -m resexp.summary model=resnet50v2 data.image_size=224 model.num_classes=1000

The class count and input channels are `model.num_classes` / `model.in_channels` when set, else
what the data set reports (resexp.data.describe); the input size is data.image_size.
"""

from __future__ import annotations

from omegaconf import DictConfig

from resexp.cli import Command, run_command
from resexp.errors import ResexpError, error_line

COMMAND = Command("summary", "a configured model's layer table and parameter counts, without training", {},
                  prefixes={"": "any override python -m resexp takes, e.g. model=resnet50v2 data.image_size=224"})


def data_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """(num_classes, in_channels, image_size): the model's keys where set, else the data set's."""
    model, data = cfg.model, cfg.data
    if model.num_classes is not None and model.in_channels is not None:
        return model.num_classes, model.in_channels, data.image_size
    try:  # reading the data set can fail in many ways (no files, no network, not written yet)
        from resexp.data import describe

        info = describe(data)
    except Exception as err:
        raise ResexpError(f"cannot get the class count and input channels from data={data.name} "
                          f"({error_line(err, limit=200, name=False)}); set model.num_classes=N model.in_channels=C"
                          ) from err
    return (info.num_classes if model.num_classes is None else model.num_classes,
            info.in_channels if model.in_channels is None else model.in_channels,
            info.image_size)


def main(argv: list[str]) -> int:
    from resexp.config import compose

    _, overrides = COMMAND.parse(argv)
    cfg = compose(overrides)  # before importing torch: a bad override fails in a second
    from resexp.models import build_model, summary_text

    num_classes, in_channels, image_size = data_shape(cfg)
    model = build_model(cfg.model, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    print(summary_text(model, cfg.model.name, num_classes, in_channels, image_size))
    return 0


if __name__ == "__main__":
    run_command(main)
