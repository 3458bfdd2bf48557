"""`python -m resexp.summary [overrides]`: the configured model's layer table and parameter counts,
without training (the same text as a run's model_summary.txt). The same overrides as
`python -m resexp`, e.g.

    python -m resexp.summary model=resnet50v2 data.image_size=224 model.num_classes=1000

The class count and input channels are `model.num_classes` / `model.in_channels` when set, else
what the data set reports (resexp.data.describe); the input size is data.image_size.
"""

from __future__ import annotations

import re
import sys

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from resexp.config import compose
from resexp.errors import ResexpError


def one_line(err: BaseException) -> str:
    """A Hydra/OmegaConf/resexp error as one line: option lists inlined, search path dropped."""
    text = str(err).split("\nConfig search path:")[0]
    if isinstance(err.__cause__, OmegaConfBaseException):  # Hydra's message leaves out the reason
        text += "\n" + str(err.__cause__).splitlines()[0]
    text = re.sub(r":\n\t", ": ", text).replace("\n\t", ", ")
    return "; ".join(line.strip().rstrip(".") for line in text.splitlines() if line.strip())


def data_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """(num_classes, in_channels, image_size): the model's keys where set, else the data set's."""
    model, data = cfg.model, cfg.data
    if model.num_classes is not None and model.in_channels is not None:
        return model.num_classes, model.in_channels, data.image_size
    try:  # reading the data set can fail in many ways (no files, no network, not written yet)
        from resexp.data import describe

        info = describe(data)
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ResexpError(f"cannot get the class count and input channels from data={data.name} ({reason}); "
                          f"set model.num_classes=N model.in_channels=C") from err
    return (info.num_classes if model.num_classes is None else model.num_classes,
            info.in_channels if model.in_channels is None else model.in_channels,
            info.image_size)


def summary_text(model, name: str, num_classes: int, in_channels: int, image_size: int) -> str:
    """A header naming the network and its input, then resexp.models.model_summary's table."""
    from resexp.models import model_summary

    shape = (1, in_channels, image_size, image_size)
    return (f"{name}: {num_classes} classes, input {list(shape[1:])} (channels, height, width)\n"
            + model_summary(model, shape))


# what a bad command line raises: one line each (resexp.cli)
USER_ERRORS = (ResexpError, HydraException, OmegaConfBaseException)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    cfg = compose(argv)  # before importing torch: a bad override fails in a second
    from resexp.models import build_model

    num_classes, in_channels, image_size = data_shape(cfg)
    model = build_model(cfg.model, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    print(summary_text(model, cfg.model.name, num_classes, in_channels, image_size))
    return 0
