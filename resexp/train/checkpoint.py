"""Checkpoint files: best.pt and last.pt written atomically, read with `torch.load(weights_only=True)`,
resume from a last.pt (found by path or by config), and the best-so-far carried into a new run directory.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects), so loading
one from an untrusted source cannot run code.

    best.pt  model (the EMA's weights when there is one), best, config, meta
    last.pt  model, ema, optimizer, scheduler, scaler, TrainingState's keys (epoch, batch,
             global_step, best, history, bad_evals, train_acc), rng, config, meta
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from resexp.errors import CheckpointError
from resexp.files import atomic_write
from resexp.records.facts import RunFacts
from resexp.run_dir import RunPaths
from resexp.train.callbacks import Callback
from resexp.train.continuation import check_continuation, differences
from resexp.train.environment import rng_state, set_rng_state
from resexp.train.state import STATE_KEYS, TrainingState

log = logging.getLogger("resexp")


# atomic_write's temporary files for checkpoints: `.<name>.<mkstemp's 8 random characters>.tmp`
_TEMP_NAME = re.compile(r"^\.(best|last)\.pt\.[a-z0-9_]{8}\.tmp$")


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save through one durable atomic write: a kill mid-write leaves the previous file intact,
    and `remove_stale_temporaries` clears what a kill -9 leaves when a run next starts there."""
    atomic_write(path, lambda f: torch.save(obj, f), durable=True)


# a temporary file untouched this long is no save in progress (a save writes it continuously)
FOREIGN_TEMP_AGE_S = 600


def remove_stale_temporaries(folder: Path, min_age_s: float = 0) -> list[Path]:
    """Delete the temporary checkpoint files a killed run left in `folder` (only atomic_save's own
    names for best.pt and last.pt: each is a full-size checkpoint). In the run's own folder, before
    it writes, any such file is stale (min_age_s=0); in another run's folder, which may still be
    running, only those older than `min_age_s`."""
    removed = []
    now = time.time()
    if folder.is_dir():
        for p in folder.iterdir():
            if _TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink() and \
                    now - p.stat().st_mtime >= min_age_s:
                p.unlink(missing_ok=True)
                removed.append(p)
    if removed:
        log.info(f"removed {len(removed)} temporary checkpoint file(s) left by a killed run in {folder}")
    return removed


def read(path: str | Path, map_location="cpu", mmap: bool = False) -> Any:
    """A torch file's contents, read with weights_only=True (no pickled code runs); what is wrong
    with a file that cannot be read is one line naming it (PyTorch's own message is a page, and
    suggests loading with weights_only=False, which would run whatever code the file holds).
    `mmap`: tensors are mapped, not read (for the plain entries of a large checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes; an interrupted copy or download?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - every failure to unpickle means the same to a user
        text = str(e)
        code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if code:
            raise CheckpointError(
                f"{path} holds code or objects resexp will not load ({code[1]}): a checkpoint must hold only "
                "tensors and plain values; use one that resexp wrote, or save the weights alone as a state dict"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        reason = detail[1] if detail else (text.strip().splitlines() or [""])[0].split(". ")[0]
        raise CheckpointError(f"{path} is not a checkpoint file (unreadable: {type(e).__name__}: "
                              f"{reason[:200]})") from None


# what resexp needs in each kind of checkpoint (older ones have all of it too); what `meta` needs is
# RunFacts.from_meta's to say (resexp/records/facts.py)
BEST_NEEDS = ("model", "meta")
LAST_NEEDS = ("model", "optimizer", "scheduler", "rng", *STATE_KEYS)
DICT_ENTRIES = ("model", "meta", "optimizer", "scheduler", "rng")  # anything else there is as good as missing


def load(path: str | Path, map_location="cpu", needs: tuple[str, ...] = ()) -> dict:
    """A resexp checkpoint: a dict holding at least `needs`; anything else is an error naming the file
    and what it lacks (and `meta`, when needed, read as the run's facts: any layout, or one line)."""
    state = read(path, map_location)
    has = state if isinstance(state, dict) else {}
    missing = [k for k in needs if k not in has or (k in DICT_ENTRIES and not isinstance(has[k], dict))]
    if not isinstance(state, dict) or missing:
        held = "" if isinstance(state, dict) else f"; it holds a value of type {type(state).__name__}, not a dict"
        raise CheckpointError(f"{path} is not a resexp checkpoint "
                              f"(missing: {', '.join(missing) or 'everything'}{held})")
    if "meta" in needs:
        RunFacts.from_meta(state["meta"], path)
    return state


def resolve(resume: str, outputs_root: Path) -> Path:
    """`trainer.resume` as a checkpoint file, a run directory (its last.pt) or a sweep job dir."""
    p = Path(resume).expanduser()
    if p.is_dir():
        p = RunPaths(p).last
    if not p.is_file():
        raise CheckpointError(
            f"trainer.resume={resume}: no checkpoint at {p} "
            f"(pass a run directory under {outputs_root}/, a .pt file, or auto)"
        )
    return p


def find_auto(config: dict, outputs_root: Path, exclude: Path | None = None) -> Path | None:
    """The newest `last.pt` under `outputs_root` whose run had the same config (resume=auto).

    Runs are compared by their `.hydra/config.yaml` (the composed config), which is cheap to read, by
    the rule that `trainer.resume` checks (continuation.py).
    """
    candidates = sorted(outputs_root.glob("**/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        run_dir = path.parent.parent
        saved = RunPaths(run_dir).config
        if (exclude is not None and run_dir == exclude) or not saved.is_file():
            continue
        if not differences(OmegaConf.to_container(OmegaConf.load(saved)), config):
            return path
    return None


def check_compatible(state: dict, model: torch.nn.Module, source: Path) -> None:
    """A clear error instead of PyTorch's key/shape dump when a checkpoint is for another network."""
    own = model.state_dict()
    theirs = state
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{source} holds another architecture: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    for k, v in own.items():
        if theirs[k].shape != v.shape:
            hint = " (another class count? use trainer.finetune_from= to load only the backbone)" if (
                k.split(".")[0] in ("fc", "classifier", "head")) else ""
            raise CheckpointError(
                f"{source} does not fit this model: {k} has shape {tuple(theirs[k].shape)} there "
                f"and {tuple(v.shape)} here{hint}"
            )


class Checkpoints(Callback):
    """One run directory's best.pt and last.pt. Only the main process writes (`write`). The Trainer's
    first callback: best.pt after a validation that improved, last.pt after every epoch, before any
    other callback sees the epoch."""

    def __init__(self, paths: RunPaths, config: dict, facts: RunFacts, write: bool):
        self.paths, self.write = paths, write
        if write:  # a run continued in its own directory (resume=auto after a kill -9)
            remove_stale_temporaries(paths.checkpoints)
        self.common = {"config": config, "meta": facts.to_meta()}  # what inference rebuilds the run from

    def on_validation_end(self, trainer, record, improved: bool) -> None:
        if improved:
            self.save_best(trainer.eval_model(), trainer.result.state.monitor.best)

    def on_epoch_end(self, trainer, record, improved) -> None:
        trainer.save_last()

    def save_best(self, model: torch.nn.Module, best: dict) -> None:
        if self.write:
            atomic_save({"model": model.state_dict(), "best": dict(best), **self.common}, self.paths.best)

    def save_last(self, parts: dict[str, Any], state: TrainingState) -> None:
        """`parts`: model, ema, optimizer, scheduler, scaler (None where the run has no EMA)."""
        if self.write:
            saved = {name: part.state_dict() if part is not None else None for name, part in parts.items()}
            atomic_save({**saved, **state.state_dict(), "rng": rng_state(), **self.common}, self.paths.last)

    def resume(self, path: Path, parts: dict[str, Any], state: TrainingState, device: torch.device) -> None:
        """Continue from a last.pt: every part, the training state and the RNG states."""
        source = Path(path).parent
        if self.write and source.resolve() != self.paths.checkpoints.resolve():  # the run continued, elsewhere
            remove_stale_temporaries(source, min_age_s=FOREIGN_TEMP_AGE_S)
        saved = load(path, map_location=device, needs=LAST_NEEDS)
        check_continuation(saved.get("config"), self.common["config"], path)
        check_compatible(saved["model"], parts["model"], path)
        for name, part in parts.items():
            if part is not None and saved.get(name) is not None:  # a run without EMA saved ema=None
                part.load_state_dict(saved[name])
        state.load_state_dict(saved)
        set_rng_state(saved["rng"])
        # Resumed into another run directory: bring the best-so-far along, or a resumed run that
        # never improves on it would end without a best.pt to re-evaluate; and the state itself, so
        # that the new directory can be resumed from even before its first epoch ends.
        source_best = Path(path).with_name(self.paths.best.name)  # best.pt beside the last.pt resumed
        if self.write and state.monitor.best and source_best.is_file() and not self.paths.best.exists():
            atomic_save(load(source_best), self.paths.best)
        if not self.paths.last.exists():
            self.save_last(parts, state)
