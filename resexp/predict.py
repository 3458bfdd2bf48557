"""`python -m resexp.predict run=<run dir> input=<image or folder> [topk=5] [csv=out.csv] [device=cpu]`

Prints the top-k classes of each image with their probabilities, using the run's best model,
its own evaluation preprocessing (resize, channels, normalisation) and its class names.

- a single file that is not a readable image: one-line error, exit status 2;
- a folder (searched recursively): files without an image extension are skipped silently, image
  files that cannot be decoded are reported by name and skipped; the exit status is 1 if any failed.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

from resexp.cli import Command, Option, run_command
from resexp.data.images import IMAGE_EXTENSIONS, image_files, is_image_name
from resexp.errors import ConfigError, DataError
from resexp.inference import LoadedRun, load_run

COMMAND = Command("predict", "the top-k classes of images by a run's best model", {
    "run": Option(None, "run directory (holds checkpoints/best.pt) or a best.pt file", required=True),
    "input": Option(None, "an image file or a folder of images", required=True),
    "topk": Option(5, "classes to show per image"),
    "csv": Option(None, "also write the predictions to this CSV file"),
    "device": Option("cpu", "cpu, cuda, cuda:N or auto"),
    "batch_size": Option(64, "images per forward pass"),
})


def collect_inputs(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"input not found: {path}")
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DataError(f"no image files under {path} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return files
    if not is_image_name(path):
        raise DataError(f"{path} is not an image file (expected one of: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return [path]


def predict_paths(run: LoadedRun, paths: list[Path], batch_size: int, single: bool):
    """Yields (path, probs or None, error or None) in order; a single bad file raises DataError."""
    for start in range(0, len(paths), batch_size):
        chunk, tensors, errors = paths[start:start + batch_size], [], {}
        for p in chunk:
            try:
                tensors.append(run.preprocess(p))
            except DataError as e:
                if single:
                    raise
                errors[p] = str(e)
        probs = iter(run.predict(torch.stack(tensors)) if tensors else [])
        for p in chunk:
            yield (p, None, errors[p]) if p in errors else (p, next(probs), None)


def format_topk(path: Path, probs: torch.Tensor, names: list[str], k: int) -> str:
    values, indices = probs.topk(k)
    width = max(len(names[int(i)]) for i in indices)
    lines = [str(path)]
    for rank, (v, i) in enumerate(zip(values.tolist(), indices.tolist(), strict=True), start=1):
        lines.append(f"  {rank}. {names[i]:<{width}}  {v:7.2%}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args, _ = COMMAND.parse(argv)
    topk, batch_size = args["topk"], args["batch_size"]
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise ConfigError(f"topk={topk} must be a positive integer")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be a positive integer")
    source = Path(str(args["input"])).expanduser()
    paths = collect_inputs(source)  # before loading the model: a bad input fails fast
    run = load_run(str(args["run"]), device=str(args["device"]))
    names = run.class_names
    k = min(topk, len(names))
    rows, failed = [], []
    for path, probs, error in predict_paths(run, paths, batch_size, single=not source.is_dir()):
        if error is not None:
            print(f"skipped: {error}", file=sys.stderr)
            failed.append(path)
            continue
        print(format_topk(path, probs, names, k))
        values, indices = probs.topk(k)
        rows.append([str(path), *[x for i, v in zip(indices.tolist(), values.tolist(), strict=True)
                                  for x in (names[i], f"{v:.6f}")]])
    if args["csv"]:
        out = Path(str(args["csv"])).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", *[c for r in range(1, k + 1) for c in (f"top{r}", f"top{r}_prob")]])
            w.writerows(rows)
        print(f"wrote {len(rows)} predictions to {out}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(paths)} image file(s) could not be read: "
              f"{', '.join(str(p) for p in failed[:5])}{', ...' if len(failed) > 5 else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_command(main)
