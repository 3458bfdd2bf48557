"""The run's facts: what a run learnt about its network and data when it was built, and the one module
that writes and reads them wherever they are kept.

    checkpoints' `meta` (best.pt, last.pt)   to_meta / from_meta
    model.json, best.onnx.json (the card)    card / from_card
    metrics.json's `params`                  metrics_fields
    LoadedRun.facts (resexp.inference)       from_meta of best.pt

Layouts, by `format_version`:
    (absent)  written before 2026-12: `meta` held the fields alone; model.json's card the same facts
              with mean/std under `normalisation`
    2         the same fields plus `format_version`
A record from a newer resexp (a higher version) is refused with one line rather than misread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from resexp.errors import CheckpointError

FORMAT_VERSION = 2
CARD_FORMAT = "resexp-model/1"  # model.json's `format`: the card's layout, which tools check
REQUIRED = ("num_classes", "in_channels", "image_size")  # without these no network can be rebuilt


def check_version(record: dict, source: object) -> None:
    """An unknown newer layout is one line naming the file; absent or older ones are read."""
    version = record.get("format_version")
    if version is None:
        return
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: run facts format_version {version} is newer than this resexp reads "
                              f"(up to {FORMAT_VERSION}); upgrade resexp to read it")


@dataclass(frozen=True)
class RunFacts:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: list[float] | None  # applied after scaling pixels to [0, 1]; None: no normalisation beyond that
    std: list[float] | None
    params: int | None

    # --- built ------------------------------------------------------------------------------------
    @classmethod
    def from_data(cls, name: str, info, params: int, num_classes: int | None = None,
                  in_channels: int | None = None) -> RunFacts:
        """A network built for a data set (`info`: its DataInfo); the model config's class count and
        channels, when set, win over the data's."""
        return cls(name=name, num_classes=int(num_classes or info.num_classes),
                   in_channels=int(in_channels or info.in_channels), image_size=info.image_size,
                   class_names=list(info.class_names), mean=list(info.mean) if info.mean else None,
                   std=list(info.std) if info.std else None, params=params)

    # --- checkpoints' meta ------------------------------------------------------------------------
    def to_meta(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_meta(cls, meta: dict, source: object = "checkpoint") -> RunFacts:
        """A checkpoint's `meta`, any layout; fields an older or hand-made one lacks read as None, and
        one without what rebuilds the network is an error naming the file and the missing keys."""
        check_version(meta, source)
        missing = [f"meta.{k}" for k in REQUIRED if meta.get(k) is None]
        if missing:
            raise CheckpointError(f"{source} is not a resexp checkpoint (missing: {', '.join(missing)})")
        return cls(**{f.name: meta.get(f.name) for f in fields(cls)})

    # --- model.json / best.onnx.json ----------------------------------------------------------------
    def card(self, config: dict, best: dict, weights: str) -> dict:
        """The model card: the model config, the input it expects and the data it was trained on."""
        model_cfg, data_cfg = dict(config.get("model") or {}), dict(config.get("data") or {})
        channels, size = int(self.in_channels), int(self.image_size)
        return {
            "format": CARD_FORMAT,
            "format_version": FORMAT_VERSION,
            "weights": weights,
            "name": self.name or model_cfg.get("name"),
            "arch": model_cfg.get("arch"),
            "num_classes": int(self.num_classes),
            "in_channels": channels,
            "image_size": size,
            "input_shape": [channels, size, size],
            "class_names": list(self.class_names or []),
            "normalisation": {"mean": self.mean, "std": self.std},
            "params": self.params,
            "best": {k: v for k, v in best.items() if isinstance(v, (int, float, str)) or v is None},
            "model": model_cfg,  # build with resexp.models.build_model(model, num_classes=, in_channels=, image_size=)
            "data": {"name": data_cfg.get("name"), "config": data_cfg},  # preprocess_image(img, data.config)
            "seed": config.get("seed"),
        }

    @classmethod
    def from_card(cls, card: dict, source: object = "model.json") -> RunFacts:
        check_version(card, source)
        missing = [k for k in REQUIRED if card.get(k) is None]
        if missing:
            raise CheckpointError(f"{source} is not a resexp model card (missing: {', '.join(missing)})")
        norm = card.get("normalisation") or {}
        return cls(name=card.get("name"), num_classes=card["num_classes"], in_channels=card["in_channels"],
                   image_size=card["image_size"], class_names=card.get("class_names") or [],
                   mean=norm.get("mean"), std=norm.get("std"), params=card.get("params"))

    # --- metrics.json ------------------------------------------------------------------------------
    def metrics_fields(self) -> dict:
        return {"params": self.params}

    # --- views -------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """The class names, or the class indices as text when the run has no names for every class."""
        names = list(self.class_names or [])
        return names if len(names) == self.num_classes else [str(i) for i in range(self.num_classes)]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return int(self.in_channels), int(self.image_size), int(self.image_size)
