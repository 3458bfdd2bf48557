"""The sweep report for a sweep directory or any set of run directories (every `metrics.json` below
them): written when a sweep ends (resexp/sweeps/multirun.py) and by `python -m resexp.report`.

Writes `sweep_summary.csv`, `sweep_summary.md` and `sweep_val_acc.png` (validation accuracy per epoch,
one line per job) into the given directory. When the runs hold plain/residual pairs
that differ only in `model/block` (experiment=degradation), the report adds the training-error gap:
final training error of the plain network minus that of the residual one, per network, and
`sweep_train_error.png`.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from resexp.errors import ResexpError
from resexp.records.epoch import EpochRecord
from resexp.run_dir import RunPaths

CSV_NAME, MD_NAME, PLOT_NAME, TRAIN_PLOT_NAME, IMPORTANCE_PLOT_NAME = (
    "sweep_summary.csv", "sweep_summary.md", "sweep_val_acc.png", "sweep_train_error.png", "sweep_importance.png")
CSV_COLUMNS = ["job", "overrides", "status", "best_epoch", "best_val_acc", "final_val_acc", "final_train_acc",
               "params", "wall_s", "error", "dir", "pruned_epoch"]
SEARCH_FILE = "search.json"  # a search's study, written by resexp/sweeps/search.py


class ReportError(ResexpError):
    pass


@dataclass
class Job:
    dir: Path
    name: str = ""
    overrides: list[str] = field(default_factory=list)
    config: dict | None = None
    status: str = "no metrics"
    error: str | None = None
    best_epoch: int | None = None
    best_val_acc: float | None = None
    final_val_acc: float | None = None
    final_train_acc: float | None = None
    params: int | None = None
    wall_s: float | None = None
    pruned_epoch: int | None = None  # a search trial the pruner stopped: after this epoch
    history: list[EpochRecord] = field(default_factory=list)

    @property
    def block(self) -> str | None:
        return _get(self.config, "model", "block", "name")

    @property
    def network(self) -> str:
        return _get(self.config, "model", "name") or self.name


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def load_job(run_dir: Path) -> Job:
    job, paths = Job(dir=run_dir), RunPaths(run_dir)
    job.overrides = [str(o) for o in (_read_yaml(paths.overrides) or [])]
    config = _read_yaml(paths.config)
    job.config = config if isinstance(config, dict) else None
    try:
        metrics = json.loads(paths.metrics.read_text())
    except FileNotFoundError:
        return job
    except (OSError, ValueError) as e:
        job.status, job.error = "unreadable", f"metrics.json: {e}"
        return job
    history = [EpochRecord.from_dict(r) for r in metrics.get("history") or [] if isinstance(r, dict)]
    best = metrics.get("best") or {}
    vals = [r.val_acc for r in history if r.validated]
    job.status = metrics.get("status") or "completed"
    job.error = metrics.get("error")
    job.best_epoch, job.best_val_acc = best.get("epoch"), best.get("val_acc")
    job.final_val_acc = vals[-1] if vals else None
    job.final_train_acc = history[-1].train_acc if history else None
    job.params = metrics.get("params")
    job.pruned_epoch = metrics.get("pruned_epoch")
    wall = metrics.get("wall_s")
    job.wall_s = wall if wall is not None else (sum(r.seconds or 0 for r in history) if history else None)
    job.history = history
    return job


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories at or below root: those with a metrics.json, or with a Hydra config but no
    metrics (a job that failed or was killed before training wrote one)."""
    if RunPaths(root).metrics.is_file():
        return [root]
    found = {p.parent for p in root.rglob(RunPaths(root).metrics.name)}
    found |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    # a sweep root has its own .hydra only when someone ran there; keep real jobs only
    return sorted((d for d in found if d != root), key=_natural)


def collect_jobs(dirs: list[Path | str]) -> list[Job]:
    run_dirs: list[Path] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ReportError(f"{d} is not a directory")
        for r in find_run_dirs(d):
            if r.resolve() not in {x.resolve() for x in run_dirs}:
                run_dirs.append(r)
    if not run_dirs:
        raise ReportError(f"no runs (metrics.json) found below {', '.join(map(str, dirs))}")
    base = Path(os.path.commonpath([str(r.resolve()) for r in run_dirs]))
    jobs = []
    for r in run_dirs:
        job = load_job(r)
        rel = r.resolve().relative_to(base) if len(run_dirs) > 1 else Path(r.resolve().name)
        job.name = str(rel) if str(rel) != "." else r.resolve().name
        jobs.append(job)
    return jobs


# --- tables ---------------------------------------------------------------------------------------
def split_overrides(jobs: list[Job]) -> tuple[list[str], dict[str, list[str]]]:
    """The overrides every job shares, and each job's own."""
    if len(jobs) < 2:
        return [], {j.name: j.overrides for j in jobs}
    common = [o for o in jobs[0].overrides if all(o in j.overrides for j in jobs[1:])]
    return common, {j.name: [o for o in j.overrides if o not in common] for j in jobs}


def _pct(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _num(x, digits: int = 4) -> str:
    return "" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def csv_rows(jobs: list[Job], out_dir: Path) -> list[dict]:
    return [{
        "job": j.name, "overrides": " ".join(j.overrides), "status": j.status,
        "best_epoch": _num(j.best_epoch), "best_val_acc": _num(j.best_val_acc), "final_val_acc": _num(j.final_val_acc),
        "final_train_acc": _num(j.final_train_acc), "params": _num(j.params), "wall_s": _num(j.wall_s, 1),
        "error": j.error or "", "dir": os.path.relpath(j.dir.resolve(), out_dir.resolve()),
        "pruned_epoch": _num(j.pruned_epoch),
    } for j in jobs]


def degradation_gaps(jobs: list[Job]) -> list[dict]:
    """Pairs of runs that differ only in model/block, one plain (plain_*) and one residual: their final
    training (and validation) errors and the gap, plain minus residual, in percentage points."""
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        if j.config is None or j.block is None or j.final_train_acc is None:
            continue
        rest = copy.deepcopy(j.config)
        rest["model"]["block"] = None
        groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(j)
    rows = []
    for group in groups.values():
        plains = [j for j in group if j.block.startswith("plain_")]
        for p in plains:
            kind = p.block.removeprefix("plain_")
            for r in (j for j in group if not j.block.startswith("plain_") and kind in j.block):
                row = {"network": r.network, "residual": r.block, "plain": p.block,
                       "train_err_residual": 1 - r.final_train_acc, "train_err_plain": 1 - p.final_train_acc}
                row["gap"] = row["train_err_plain"] - row["train_err_residual"]
                if r.final_val_acc is not None and p.final_val_acc is not None:
                    row["val_err_residual"], row["val_err_plain"] = 1 - r.final_val_acc, 1 - p.final_val_acc
                rows.append(row)
    return sorted(rows, key=lambda r: (_natural(Path(r["network"])), r["residual"]))


def read_search(folder: Path) -> dict | None:
    """A search's search.json in the sweep directory, or None."""
    try:
        return json.loads((Path(folder) / SEARCH_FILE).read_text())
    except (OSError, ValueError):
        return None


def search_lines(search: dict) -> list[str]:
    """The study: its trials by state, the best trial, the parameter importances (Optuna's evaluator)."""
    states: dict[str, int] = {}
    for t in search.get("trials", []):
        states[t["state"]] = states.get(t["state"], 0) + 1
    lines = ["", "## Search", "",
             f"Study `{search['study']}` ({search['sampler']} sampler, {search['pruner']} pruner, "
             f"{search['direction']} {search['objective']}): "
             + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
             + f" of {search['n_trials']} trials. Storage: `{search['storage']}`."]
    best = search.get("best")
    if best:
        params = " ".join(f"{k}={v}" for k, v in sorted(best["params"].items()))
        lines.append(f"Best trial: {best['number']} (job {best['number']}), {search['objective']} "
                     f"{best['value']:.4f}, `{params}`.")
    pruned = [t for t in search.get("trials", []) if t["state"] == "pruned"]
    if pruned:
        lines.append("Pruned: " + ", ".join(f"trial {t['number']} at epoch {t['last_epoch']}" for t in pruned) + ".")
    if search.get("importances"):
        lines += ["", "| parameter | importance |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in search["importances"].items()]
    return lines


def markdown(jobs: list[Job], title: str, gaps: list[dict], plots: list[str], search: dict | None = None) -> str:
    common, own = split_overrides(jobs)
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    lines = [f"# Sweep report: {title}", ""]
    lines.append(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}: "
                 + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".")
    if common:
        lines.append(f"Every job: `{' '.join(common)}`.")
    scored = [j for j in jobs if j.best_val_acc is not None and j.status == "completed"]
    if scored:
        b = max(scored, key=lambda j: j.best_val_acc)
        lines.append(f"Best: job {b.name} (`{' '.join(own[b.name]) or 'no overrides'}`), "
                     f"val acc {_pct(b.best_val_acc)} at epoch {b.best_epoch}.")
    lines += ["", "| job | overrides | status | best epoch | best val acc | final val acc | params | wall time |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for j in jobs:
        wall = "" if j.wall_s is None else f"{j.wall_s:.1f} s"
        params = "" if j.params is None else f"{j.params:,}"
        lines.append(f"| {j.name} | {_md_cell(' '.join(own[j.name]))} | {j.status} | {_num(j.best_epoch)} | "
                     f"{_pct(j.best_val_acc)} | {_pct(j.final_val_acc)} | {params} | {wall} |")
    pruned = [j for j in jobs if j.status == "pruned"]
    if pruned:
        lines += ["", "Pruned by the search's pruner (their curves end early, marked x):", ""]
        lines += [f"- job {j.name}: pruned at epoch {j.pruned_epoch}" for j in pruned]
    failed = [j for j in jobs if j.status not in ("completed", "pruned")]
    if failed:
        lines += ["", "Jobs that did not complete:", ""]
        lines += [f"- job {j.name}: {j.status}" + (f" - {_md_cell(j.error)}" if j.error else "") for j in failed]
    if gaps:
        lines += ["", "## Degradation: final training error, plain minus residual", "",
                  "| network | residual block | plain block | train error residual | train error plain | "
                  "gap (points) | val error residual | val error plain |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for g in gaps:
            lines.append(f"| {g['network']} | {g['residual']} | {g['plain']} | {_pct(g['train_err_residual'])} | "
                         f"{_pct(g['train_err_plain'])} | {100 * g['gap']:+.2f} | {_pct(g.get('val_err_residual'))} | "
                         f"{_pct(g.get('val_err_plain'))} |")
    if search:
        lines += search_lines(search)
    for name in plots:
        lines += ["", f"![{name}]({name})"]
    return "\n".join(lines) + "\n"


# --- plots ----------------------------------------------------------------------------------------
def _label(j: Job, own: dict[str, list[str]]) -> str:
    text = f"{j.name}: {' '.join(own[j.name])}" if own[j.name] else j.name
    return text if len(text) <= 60 else text[:57] + "..."


def plot_curves(jobs: list[Job], path: Path, key: str, ylabel: str, error: bool = False) -> bool:
    from matplotlib.figure import Figure

    _, own = split_overrides(jobs)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for j in jobs:
        points = [(r.epoch, getattr(r, key)) for r in j.history if getattr(r, key) is not None]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ys = [1 - y for y in ys] if error else list(ys)  # fractions, as metrics.json and the trackers have them
        line, = ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3,
                        linestyle="-" if j.status == "completed" else "--", label=_label(j, own))
        if j.status == "pruned":
            ax.plot(xs[-1:], ys[-1:], marker="x", markersize=9, color=line.get_color())
        drawn += 1
    if not drawn:
        return False
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if error:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.savefig(path, dpi=100)
    return True


def plot_importances(search: dict, path: Path) -> bool:
    """A search's parameter importances as bars."""
    from matplotlib.figure import Figure

    importances = search.get("importances") or {}
    if not importances:
        return False
    fig = Figure(figsize=(6, 1 + 0.4 * len(importances)), layout="constrained")
    ax = fig.add_subplot()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel(f"importance for {search['objective']} (Optuna, fANOVA)")
    fig.savefig(path, dpi=100)
    return True


def build_report(jobs: list[Job], out_dir: Path, root: Path | None = None) -> list[Path]:
    """Write the CSV, the markdown and the plots into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / CSV_NAME, out_dir / MD_NAME]
    with open(paths[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(jobs, out_dir))
    gaps = degradation_gaps(jobs)
    plots = []
    if plot_curves(jobs, out_dir / PLOT_NAME, "val_acc", "validation accuracy"):
        plots.append(PLOT_NAME)
    if gaps and plot_curves(jobs, out_dir / TRAIN_PLOT_NAME, "train_acc", "training error", error=True):
        plots.append(TRAIN_PLOT_NAME)
    search = read_search(root) if root is not None else None
    if search and plot_importances(search, out_dir / IMPORTANCE_PLOT_NAME):
        plots.append(IMPORTANCE_PLOT_NAME)
    paths[1].write_text(markdown(jobs, str(root or out_dir), gaps, plots, search))
    return paths + [out_dir / p for p in plots]
