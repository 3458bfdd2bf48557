"""`python -m resexp.evaluate run=<run dir> [split=val|test] [json=out.json] [device=auto] [data.key=value ...]`

Evaluates a run's best.pt on a split of its data set (the run's own data config, seed and
preprocessing; `data.*` overrides point it elsewhere, e.g. `data.root=/new/photos` or
`data.batch_size=32`) and prints loss, top-1 and top-5 accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from resexp.cli import Command, Option, run_command
from resexp.errors import ConfigError, DataError
from resexp.inference import LoadedRun, load_run

COMMAND = Command("evaluate", "a run's best model on a split of its data set: loss, top-1, top-5", {
    "run": Option(None, "run directory (holds checkpoints/best.pt) or a best.pt file", required=True),
    "split": Option("val", "val or test"),
    "json": Option(None, "also write the results to this JSON file"),
    "device": Option("auto", "auto, cpu, cuda or cuda:N"),
    "precision": Option("32", "32, bf16 or 16"),
}, prefixes={"data.": "override the run's data config, e.g. data.root=... data.batch_size=..."})


def evaluate_loader(run: LoadedRun, loader, precision: str = "32") -> dict:
    """Loss, top-1, top-5 and count, by the loop (and TTA) the trainer's validation runs."""
    from resexp.train.environment import autocast
    from resexp.train.evaluation import evaluate

    return evaluate(run.model, loader, run.device, tta_flip=run.tta_flip, autocast=autocast(run.device, precision))


def evaluate_run(run: LoadedRun, split: str = "val", precision: str = "32") -> dict:
    from resexp.data import build_data

    if split not in ("val", "test"):
        raise ConfigError(f"split={split} must be val or test")
    data = build_data(run.data_cfg, device=run.device, seed=int(run.config.get("seed", 0)), rank=0, world_size=1)
    loader = data.val if split == "val" else data.test
    if loader is None:
        raise DataError(f"data set {run.data_cfg.name} has no test split; use split=val")
    if data.info.num_classes != run.facts.num_classes:
        raise DataError(f"data set {run.data_cfg.name} has {data.info.num_classes} classes but the model was "
                        f"trained on {run.facts.num_classes}")
    if list(data.info.class_names) != list(run.facts.class_names or data.info.class_names):
        raise DataError(f"the data's class names {list(data.info.class_names)[:6]} differ from the run's "
                        f"{list(run.facts.class_names)[:6]}: labels would not line up")
    t0 = time.perf_counter()
    out = evaluate_loader(run, loader, precision)
    return {"split": split, "loss": out["loss"], "acc": out["acc"], "acc5": out["acc5"], "count": out["count"],
            "seconds": round(time.perf_counter() - t0, 3)}


def main(argv: list[str]) -> int:
    args, data_overrides = COMMAND.parse(argv)
    run = load_run(str(args["run"]), device=str(args["device"]), data_overrides=data_overrides)
    result = evaluate_run(run, str(args["split"]), str(args["precision"]))
    recorded = run.best.get(f"{result['split']}_acc")
    print(f"run {run.run_dir or run.checkpoint}: {run.facts.name}, best epoch {run.best.get('epoch')}")
    print(f"data {run.data_cfg.name} {result['split']}: {result['count']} images")
    print(f"loss {result['loss']:.4f}  top-1 {result['acc']:.2%}  top-5 {result['acc5']:.2%}"
          + (f"  (recorded at training: top-1 {recorded:.2%})" if recorded is not None else ""))
    if args["json"]:
        out = Path(str(args["json"])).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {"run": str(run.run_dir) if run.run_dir else None, "checkpoint": str(run.checkpoint),
                  "model": run.facts.name, "best_epoch": run.best.get("epoch"), "data": run.data_cfg.name,
                  "data_overrides": data_overrides, **result, "recorded_acc": recorded}
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_command(main)
