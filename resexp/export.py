"""`python -m resexp.export run=<run dir> [format=onnx] [out=<path>] [verify=true] [images=<dir>] [data.key=value ...]`

Writes a run's best model (checkpoints/best.pt, loaded as `resexp.predict` loads it) as ONNX with a
dynamic batch dimension, `<run dir>/best.onnx`, and its card `best.onnx.json` (model.json's fields
plus the graph's input/output; the same card is in the ONNX file's metadata_props). The graph takes
the preprocessed float32 batch [N, C, H, W] and returns logits [N, num_classes].

Before the file is put in place, onnxruntime (CPU) runs it on real images (the run's validation
images, or `images=<dir>`) next to PyTorch; a max relative logit difference above 1e-4 is an error
and leaves nothing behind.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from resexp.cli import Command, Option, run_command
from resexp.data.images import image_files
from resexp.errors import ConfigError, DataError, ResexpError, error_line
from resexp.files import atomic_write
from resexp.inference import LoadedRun, load_run
from resexp.reports.export import write_card

COMMAND = Command("export", "a run's best model as ONNX, checked against PyTorch by onnxruntime", {
    "run": Option(None, "run directory (holds checkpoints/best.pt) or a best.pt file", required=True),
    "format": Option("onnx", "export format: onnx"),
    "out": Option(None, "output file (default <run dir>/best.onnx); its card goes to <out>.json"),
    "verify": Option(True, "compare onnxruntime's logits with PyTorch's on real images"),
    "images": Option(None, "verify on these images (a folder or a file) instead of the run's validation images"),
}, prefixes={"data.": "override the run's data config for verification, e.g. data.root=..."})
FORMATS = ("onnx",)

CARD_FORMAT = "resexp-onnx/1"
# 18: torch's ONNX translations are written for opset 18 (no version conversion) and every maintained
# runtime (onnxruntime >= 1.14) runs it; a ResNet needs no newer operator.
OPSET = 18
INPUT, OUTPUT = "input", "logits"
EXAMPLE_BATCH = 2  # the traced example; the batch dimension is dynamic, verification uses another size
VERIFY_IMAGES = 64
TOLERANCE = 1e-4  # max|onnx - torch| / max|torch|
EXTRA = "pip install 'resexp[export]'"


def require(*modules: str) -> None:
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ResexpError(f"format=onnx needs {', '.join(missing)}, which is not installed: {EXTRA}")


def onnx_card(run: LoadedRun, out: Path) -> dict:
    """model.json's card for the ONNX file: preprocessing, class names, the graph's input and output."""
    card = run.facts.card(run.config, run.best, weights=out.name)
    c, s, _ = run.input_shape
    tta = bool((run.config.get("trainer") or {}).get("tta_flip", False))
    card.update({
        "format": CARD_FORMAT,
        "preprocessing": "decode to the set's channels, resize the shorter side to image_size (antialiased), "
                         "centre-crop to image_size, scale to [0, 1], then (x - mean) / std per channel",
        "onnx": {"opset": OPSET, "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=True)",
                 "input": {"name": INPUT, "shape": ["batch", c, s, s], "dtype": "float32"},
                 "output": {"name": OUTPUT, "shape": ["batch", card["num_classes"]],
                            "kind": "logits (softmax gives probabilities)"}},
        "tta_flip": tta,
    })
    if tta:  # the graph is the plain model; the run's accuracy was measured with the flip average
        card["tta_note"] = ("the run evaluated with flip TTA: to reproduce its accuracy average the logits of "
                            "x and of x flipped along its last (width) axis; the graph holds the plain model")
    return card


def export_proto(run: LoadedRun):
    """The run's model as an onnx.ModelProto, batch dimension dynamic; an exporter failure names the model."""
    model = run.model.cpu().eval()
    x = torch.zeros(EXAMPLE_BATCH, *run.input_shape)
    try:
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=OPSET, input_names=[INPUT],
                                    output_names=[OUTPUT], dynamic_shapes=({0: "batch"},), verbose=False)
    except Exception as e:  # the exporter raises many types (torch.export, onnxscript, unsupported ops)
        arch = run.config.get("model", {}).get("arch")
        raise ResexpError(f"model {run.facts.name} (arch={arch}) cannot be exported to ONNX: "
                          f"{error_line(e)}") from e
    return program.model_proto


def verification_images(run: LoadedRun, images: str | None) -> torch.Tensor:
    """Up to VERIFY_IMAGES preprocessed images: the given files, or the run's validation split."""
    if images is not None:
        src = Path(str(images)).expanduser()
        files = image_files(src) if src.is_dir() else [src] if src.exists() else None
        if not files:
            raise DataError(f"images={src}: " + ("no such file or folder" if files is None else "no image files"))
        return torch.stack([run.preprocess(p) for p in files[:VERIFY_IMAGES]])
    from resexp.data import build_data

    try:
        data = build_data(run.data_cfg, device="cpu", seed=int(run.config.get("seed", 0)), rank=0, world_size=1)
    except DataError as e:
        raise DataError(f"{e} (verification needs the run's validation images: pass images=<dir>, "
                        f"data.root=..., or verify=false)") from None
    data.val.set_epoch(0)
    batches, n = [], 0
    for x, _ in data.val:
        batches.append(x.float().cpu())
        n += len(x)
        if n >= VERIFY_IMAGES:
            break
    return torch.cat(batches)[:VERIFY_IMAGES]


def max_relative_difference(onnx_bytes: bytes, model: torch.nn.Module, x: torch.Tensor) -> float:
    """max|onnxruntime - torch| / max|torch| on the batch x."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # as many as torch uses: the cores may be shared
    session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])
    with torch.inference_mode():
        want = model(x).float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def ours(path: Path) -> bool:
    """True when path is a file an earlier export wrote (its card names CARD_FORMAT)."""
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text()).get("format") == CARD_FORMAT
        import onnx

        props = onnx.load(str(path), load_external_data=False).metadata_props
        return any(p.key == "format" and p.value == CARD_FORMAT for p in props)
    except Exception:  # unreadable, not JSON, not ONNX: the user's file
        return False


def export_onnx(run: LoadedRun, out: Path, verify: bool = True, images: str | None = None) -> dict:
    """Export, verify, then write out and out.json; returns the card."""
    card_path = out.with_name(out.name + ".json")
    for p in (out, card_path):
        if p.is_dir() or (p.exists() and not ours(p)):
            raise ConfigError(f"{p} exists and was not written by resexp.export: "
                              f"not overwriting it (choose another out=...)")
    if not out.parent.is_dir():
        raise ConfigError(f"out={out}: folder {out.parent} does not exist")
    card = onnx_card(run, out)
    proto = export_proto(run)
    if verify:
        x = verification_images(run, images)
        diff = max_relative_difference(proto.SerializeToString(), run.model, x)
        print(f"verified with onnxruntime on {len(x)} images: max relative logit difference {diff:.2e}"
              f" (tolerance {TOLERANCE:g})")
        if not diff <= TOLERANCE:  # also catches NaN
            raise ResexpError(f"ONNX export of {run.facts.name} disagrees with PyTorch: max relative "
                                  f"logit difference {diff:.2e} > {TOLERANCE:g}; nothing written")
        card["verified"] = {"images": len(x), "max_relative_difference": diff, "tolerance": TOLERANCE}
    import onnx

    meta = {"format": CARD_FORMAT, "card": json.dumps(card, default=str), "input_name": INPUT, "output": OUTPUT,
            "image_size": str(card["image_size"]), "in_channels": str(card["in_channels"]),
            "mean": json.dumps(card["normalisation"]["mean"]), "std": json.dumps(card["normalisation"]["std"]),
            "class_names": json.dumps(card["class_names"]), "tta_flip": json.dumps(card["tta_flip"])}
    onnx.helper.set_model_props(proto, meta)
    # one self-contained file (no .onnx.data beside it): protobuf's 2 GB limit is far above any ResNet here
    atomic_write(out, lambda f: f.write(proto.SerializeToString()))
    write_card(card, card_path)
    return card


def main(argv: list[str]) -> int:
    args, data_overrides = COMMAND.parse(argv)
    fmt = str(args["format"]).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format={args['format']}; valid formats: {', '.join(FORMATS)}")
    if not isinstance(args["verify"], bool):
        raise ConfigError(f"verify={args['verify']} must be true or false")
    require("onnx", "onnxscript", *(["onnxruntime"] if args["verify"] else []))
    run = load_run(str(args["run"]), device="cpu", data_overrides=data_overrides)
    default_dir = run.run_dir if run.run_dir is not None else run.checkpoint.parent
    out = Path(str(args["out"])).expanduser() if args["out"] else default_dir / "best.onnx"
    export_onnx(run, out, verify=args["verify"], images=args["images"])
    print(f"wrote {out} and {out.name}.json ({run.facts.name}: input {INPUT} [batch, "
          f"{', '.join(map(str, run.input_shape))}] float32 -> {OUTPUT} [batch, {run.facts.num_classes}])")
    return 0


if __name__ == "__main__":
    run_command(main)
