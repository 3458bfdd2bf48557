"""resexp's hand-written pieces against the libraries that offer them: same numbers? how fast?

    pip install -e ".[libraries]"         # torchinfo, torchmetrics, kornia: only this script imports them
    python benchmarks/bench_libraries.py  # the figures recorded in benchmarks/RESULTS.md

All on the same tensors in one process; each pair's two sides run interleaved (A, B, A, B, ...) and
every figure is the median over the repeats, so a machine shared with other processes slows both
sides alike. Ratio = library time / resexp time (> 1: resexp is faster).

1. Batched augmentation (resexp.data.augment) vs Kornia, batch 256 of 32x32x3: resexp on uint8 (its
   input in the memory loader), Kornia on float 0..1 (what it takes); crop pad 4 + flip, random
   resized crop, random erasing, TrivialAugment, RandAugment (2 ops, magnitude 9).
2. Running train/eval metrics (resexp.train.metrics.Accumulator: loss, top-1, top-5 as device sums)
   vs torchmetrics MeanMetric + MulticlassAccuracy(top_k=1) + (top_k=5), per batch of 256 logits,
   with torchmetrics' argument checks on (its default) and off.
3. Confusion matrix + per-class precision/recall/F1 (resexp.reports.metrics) vs torchmetrics and
   scikit-learn (already a dependency) on 10,000 predictions; also each library's import time in a
   fresh interpreter, which a run's report would pay once.
4. Model summary (resexp.models.model_summary) vs torchinfo.summary: rows compared for v1, v2
   pre-activation and CIFAR ResNets; time for a ResNet-50 at 224.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from bench_common import hardware, median, table  # noqa: E402 (this script's folder is on sys.path)

from resexp.data import augment  # noqa: E402
from resexp.models import create, model_summary  # noqa: E402
from resexp.reports.metrics import confusion_matrix, per_class  # noqa: E402
from resexp.train.metrics import Accumulator  # noqa: E402


def interleaved(pair: dict, repeats: int, calls: int) -> dict[str, float]:
    """{name: median seconds per call}: each repeat times `calls` calls of every entry, in turn."""
    times: dict[str, list[float]] = {k: [] for k in pair}
    for fn in pair.values():  # warm-up (first-call allocations, lazy imports)
        fn()
    for _ in range(repeats):
        for name, fn in pair.items():
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t) / calls)
    return {k: median(v) for k, v in times.items()}


def row(piece: str, times: dict[str, float], note: str = "") -> dict:
    (_, lib), (t_ours, t_lib) = times.keys(), times.values()
    return {"piece": piece, "ours": f"{t_ours * 1e3:.3f}", "lib": f"{t_lib * 1e3:.3f}", "lib_name": lib,
            "ratio": t_lib / t_ours, "note": note}


# ------------------------------------------------------------------------------------------ augmentation
def bench_augment(repeats: int, calls: int) -> list[dict]:
    import kornia.augmentation as K
    from kornia.augmentation.auto import RandAugment, TrivialAugment

    g0 = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g0)
    xf = x8.float() / 255
    gen = lambda: torch.Generator().manual_seed(1)  # resexp: one seeded generator per batch, as the loader
    k_crop = K.AugmentationSequential(K.RandomCrop((32, 32), padding=4), K.RandomHorizontalFlip())
    k_rrc = K.RandomResizedCrop((32, 32))
    k_erase = K.RandomErasing(p=0.5, value=0.0)
    k_trivial, k_rand = TrivialAugment(), RandAugment(n=2, m=9)
    cases = [
        ("crop pad 4 + flip", lambda: augment.crop_flip(x8, 4, True, gen()), lambda: k_crop(xf), ""),
        ("random resized crop -> 32", lambda: augment.random_resized_crop(x8, 32, gen()), lambda: k_rrc(xf), ""),
        ("random erasing p=0.5", lambda: augment.random_erasing(xf.clone(), 0.5, gen()),
         lambda: k_erase(xf), "both on float"),
        ("TrivialAugment", lambda: augment.batched_policy(x8, "trivialaugment", gen()), lambda: k_trivial(xf),
         "Kornia: one op for the whole batch"),
        ("RandAugment (2 ops, m=9)", lambda: augment.batched_policy(x8, "randaugment", gen()), lambda: k_rand(xf),
         "Kornia: the same 2 ops for the whole batch"),
    ]
    rows = []
    for name, ours, lib, note in cases:
        rows.append(row(name, interleaved({"resexp": ours, "kornia": lib}, repeats, calls), note))
    return rows


# ----------------------------------------------------------------------------------------- running metrics
def running_metrics(classes: int):
    """(resexp, torchmetrics(validate_args)) over the same 8 batches of 256 logits: loss, top-1, top-5."""
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(256, classes, generator=g), torch.randint(0, classes, (256,), generator=g))
               for _ in range(8)]
    batches = [(lg, y, F.cross_entropy(lg, y)) for lg, y in batches]

    def ours():
        acc = Accumulator(torch.device("cpu"))
        for lg, y, loss in batches:
            acc.update(loss, lg, y)
        return acc.compute()

    def lib(validate: bool):
        def run():
            top1 = MulticlassAccuracy(classes, top_k=1, average="micro", validate_args=validate)
            top5 = MulticlassAccuracy(classes, top_k=5, average="micro", validate_args=validate)
            mean = MeanMetric()
            for lg, y, loss in batches:
                top1.update(lg, y)
                top5.update(lg, y)
                mean.update(loss, weight=y.shape[0])
            return {"loss": float(mean.compute()), "acc": float(top1.compute()), "acc5": float(top5.compute())}
        return run

    return ours, lib, len(batches)


def bench_running(repeats: int, calls: int) -> tuple[list[dict], list[str]]:
    rows, checks = [], []
    for classes in (10, 1000):
        ours, lib, n = running_metrics(classes)
        a, b = ours(), lib(True)()
        same = all(abs(a[k] - b[k]) < 1e-6 for k in ("loss", "acc", "acc5"))
        checks.append(f"running metrics, {classes} classes, {n} batches: resexp {a} vs torchmetrics {b}: "
                      f"{'equal' if same else 'DIFFERENT'} (to 1e-6)")
        t = interleaved({"resexp": ours, "torchmetrics": lib(True), "torchmetrics, validate_args=False": lib(False)},
                        repeats, calls)
        for lib_name in ("torchmetrics", "torchmetrics, validate_args=False"):
            rows.append(row(f"loss + top-1 + top-5 per batch of 256, {classes} classes",
                            {"resexp": t["resexp"] / n, lib_name: t[lib_name] / n},
                            f"{n} updates + 1 compute, per update"))
    return rows, checks


# ----------------------------------------------------------------------------------- confusion / per class
def import_seconds(module: str) -> float:
    """Median of 3 fresh interpreters: time to import `module` after torch (which resexp has loaded)."""
    code = f"import torch, time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return median([float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout) for _ in range(3)])


def bench_per_class(repeats: int, calls: int) -> tuple[list[dict], list[str]]:
    from sklearn.metrics import confusion_matrix as sk_cm
    from sklearn.metrics import precision_recall_fscore_support
    from torchmetrics.classification import (
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    classes = 10
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, classes - 1, (10_000,), generator=g)  # class 9 never present
    right = (torch.rand(10_000, generator=g) < 0.7) & (targets != 8)  # class 8 present, never predicted
    preds = torch.where(right, targets, torch.randint(0, classes - 2, (10_000,), generator=g))
    names = [str(i) for i in range(classes)]

    def ours():
        return per_class(confusion_matrix(preds, targets, classes), names)

    tm = [m(classes, average=None, zero_division=0) for m in (MulticlassPrecision, MulticlassRecall,
                                                               MulticlassF1Score)]
    tm_cm = MulticlassConfusionMatrix(classes)

    def torchmetrics_():
        return tm_cm(preds, targets), *(m(preds, targets) for m in tm)

    def sklearn_():
        labels = list(range(classes))
        return (sk_cm(targets.numpy(), preds.numpy(), labels=labels),
                precision_recall_fscore_support(targets.numpy(), preds.numpy(), labels=labels, zero_division=0))

    a = ours()
    cm = confusion_matrix(preds, targets, classes)
    t_cm, *t_prf = torchmetrics_()
    s_cm, s_prf = sklearn_()
    close = lambda vals, key: all(abs(a[n][key] - float(v)) < 1e-6 for n, v in zip(names, vals, strict=True))
    keys = ("precision", "recall", "f1")
    checks = [
        f"confusion matrix (10,000 predictions, 10 classes: 8 never predicted, 9 never present): torchmetrics "
        f"{'equal' if torch.equal(cm, t_cm) else 'DIFFERENT'}, scikit-learn "
        f"{'equal' if torch.equal(cm, torch.from_numpy(s_cm)) else 'DIFFERENT'}",
        "per-class precision/recall/F1 (zero_division=0), to 1e-6: torchmetrics "
        + ("equal" if all(close(v, k) for v, k in zip(t_prf, keys, strict=True)) else "DIFFERENT")
        + ", scikit-learn " + ("equal" if all(close(v, k) for v, k in zip(s_prf[:3], keys, strict=True))
                               else "DIFFERENT")
        + "; support: scikit-learn " + ("equal" if [a[n]["support"] for n in names] == s_prf[3].tolist()
                                        else "DIFFERENT"),
    ]
    t = interleaved({"resexp": ours, "torchmetrics": torchmetrics_, "scikit-learn": sklearn_}, repeats, calls)
    rows = [row("confusion matrix + per-class P/R/F1, 10,000 predictions", {"resexp": t["resexp"], k: t[k]})
            for k in ("torchmetrics", "scikit-learn")]
    for module in ("torchmetrics", "sklearn.metrics"):
        checks.append(f"import {module} in a fresh interpreter (after torch): {import_seconds(module):.2f} s")
    return rows, checks


# ---------------------------------------------------------------------------------------------- summary
def ours_rows(model, shape) -> list[tuple]:
    lines = model_summary(model, shape).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    end = next(i for i, line in enumerate(lines) if i > start and line.startswith("==="))
    out = []
    for line in lines[start:end]:
        name, kind, *shape_params = line.split()
        out.append((name, kind, " ".join(shape_params[:-1]), int(shape_params[-1].replace(",", ""))))
    return out


def torchinfo_rows(stats) -> list[tuple]:
    """torchinfo's rows as resexp lists them: dotted name, type, output shape, own parameters; the layers
    that hold weights or have no sub-layers, Identity left out."""
    out = []
    for info in stats.summary_list:
        names, node = [], info
        while node is not None and node.parent_info is not None:
            names.append(node.var_name)
            node = node.parent_info
        own = any(True for _ in info.module.parameters(recurse=False))
        if names and not isinstance(info.module, torch.nn.Identity) and (info.is_leaf_layer or own):
            out.append((".".join(reversed(names)), type(info.module).__name__, str(info.output_size),
                        0 if info.is_recursive else info.num_params))
    return out


def bench_summary(repeats: int) -> tuple[list[dict], list[str]]:
    import torchinfo

    checks = []
    for name, size, classes in [("resnet20", 32, 10), ("resnet56", 32, 10), ("resnet18", 224, 1000),
                                ("resnet50", 224, 1000), ("resnet50v2", 224, 1000)]:
        model, shape = create(name, num_classes=classes, image_size=size), (1, 3, size, size)
        stats = torchinfo.summary(model, input_size=shape, depth=100, verbose=0)
        a, b = ours_rows(model, shape), torchinfo_rows(stats)
        checks.append(f"summary {name} at {size}: {len(a)} rows; names, types, output shapes "
                      f"{'equal' if [r[:3] for r in a] == [r[:3] for r in b] else 'DIFFERENT'}, per-layer params "
                      f"{'equal' if [r[3] for r in a] == [r[3] for r in b] else 'DIFFERENT'}; total "
                      f"{stats.total_params:,} (torchinfo) vs {sum(r[3] for r in a):,} (resexp)")
    model, shape = create("resnet50", num_classes=1000, image_size=224), (1, 3, 224, 224)
    t = interleaved({"resexp": lambda: model_summary(model, shape),
                     "torchinfo": lambda: str(torchinfo.summary(model, input_size=shape, depth=100, verbose=0))},
                    repeats, 1)
    return [row("model summary, ResNet-50 at 224", t, "one forward pass each")], checks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats per pair (the median is kept)")
    p.add_argument("--calls", type=int, default=10, help="calls per repeat for the fast pieces")
    args = p.parse_args()
    import kornia
    import torchinfo
    import torchmetrics

    print(f"# {hardware(torch.device('cpu'))}, threads {torch.get_num_threads()}; kornia {kornia.__version__}, "
          f"torchmetrics {torchmetrics.__version__}, torchinfo {torchinfo.__version__}")
    print(f"# command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    rows = bench_augment(args.repeats, args.calls)
    r, checks = bench_running(args.repeats, args.calls)
    rows += r
    r, c = bench_per_class(args.repeats, args.calls)
    rows, checks = rows + r, checks + c
    r, c = bench_summary(max(3, args.repeats // 2))
    rows, checks = rows + r, checks + c
    print(table(rows, [("piece", "piece"), ("ours", "resexp ms"), ("lib_name", "library"), ("lib", "library ms"),
                       ("ratio", "library / resexp"), ("note", "note")]))
    print("\n" + "\n".join(f"- {c}" for c in checks))


if __name__ == "__main__":
    main()
