"""The training loop: epochs of steps, validation, best/last checkpoints, exact resume.

Everything random in an epoch is a function of the seed, the epoch and the restored RNG
states, so a run resumed from `last.pt` continues bit for bit where it stopped (on CPU).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resexp.config import to_plain
from resexp.errors import ConfigError, ResexpError
from resexp.optim import build_optimizer, build_scheduler
from resexp.train import checkpoint
from resexp.train.ema import EMA
from resexp.train.environment import Env, autocast, average_buffers, rng_state, set_rng_state
from resexp.train.logger import RunLogger, write_json
from resexp.train.metrics import Accumulator

log = logging.getLogger("resexp")


# trainer.compile_mode -> the mode evaluation compiles with: no CUDA graphs there, since evaluation
# keeps a call's outputs while it makes the next (flip TTA, collected predictions).
COMPILE_MODES = {
    "default": "default",
    "reduce-overhead": "default",
    "max-autotune": "max-autotune-no-cudagraphs",
    "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs",
}


class NonFiniteLoss(ResexpError):
    pass


class Interrupted(ResexpError):
    pass


def check_trainer(t) -> None:
    """The trainer keys that have a fixed set of values or a lower bound."""
    if t.accumulate < 1 or t.val_every < 1 or t.epochs < 1:
        raise ConfigError("trainer.epochs, trainer.accumulate and trainer.val_every must be >= 1")
    if t.monitor not in ("val_acc", "val_loss"):
        raise ConfigError(f"trainer.monitor='{t.monitor}' is not one of: val_acc, val_loss")
    if t.ema_decay is not None and not 0 < t.ema_decay < 1:
        raise ConfigError(f"trainer.ema_decay={t.ema_decay} must be between 0 and 1 (e.g. 0.999), or null for none")
    if t.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile_mode='{t.compile_mode}' is not one of: {', '.join(COMPILE_MODES)}")


def _mixer(cfg, num_classes: int):
    """torchvision's batch MixUp / CutMix (one of them at random when both are on), or None."""
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return None
    from torchvision.transforms import v2

    mixers = []
    if cfg.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


class Trainer:
    def __init__(self, cfg, model: nn.Module, data, env: Env, run_dir: Path, meta: dict):
        self.cfg, self.tcfg, self.data, self.env = cfg, cfg.trainer, data, env
        self.run_dir, self.meta = run_dir, meta
        self.logger = RunLogger(run_dir, enabled=False, progress=False)  # run() attaches the real one
        self.ckpt_dir = run_dir / "checkpoints"
        t = self.tcfg
        check_trainer(t)
        self.device = env.device
        self.autocast = autocast(self.device, t.precision)
        self._accumulate, self._grad_clip = t.accumulate, t.grad_clip  # read per step: plain values

        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        if env.distributed and t.sync_batchnorm:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay is not None else None
        eval_mode = COMPILE_MODES[t.compile_mode]
        self.cuda_graphs = t.compile and eval_mode != t.compile_mode  # graph modes: evaluation runs without
        self.eval_forward = self._compiled(self.model, eval_mode)
        self.ddp = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                           else None) if env.distributed else None
        self.train_forward = self._compiled(self.ddp or self.model, t.compile_mode)

        self.steps_per_epoch = math.ceil(self.train_batches() / t.accumulate)
        global_batch = data.train.batch_size * env.world_size * t.accumulate
        self.optimizer = build_optimizer(self.model, cfg.optimizer, batch_size=global_batch, device=self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.scheduler, epochs=t.epochs,
                                         steps_per_epoch=self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        self.mixer = _mixer(t, meta["num_classes"])

        # progress: epochs done, batches done in the current epoch, optimizer steps
        self.epoch, self.batch, self.global_step = 0, 0, 0
        self.best: dict = {}
        self.history: list[dict] = []
        self.bad_evals = 0
        self.train_acc = Accumulator(self.device)
        self.stop_signal: int | None = None

    # --- helpers -------------------------------------------------------------------------
    def _compiled(self, module: nn.Module, mode: str):
        if not self.tcfg.compile:
            return module
        compiled = torch.compile(module, mode=mode)
        state = {"fn": compiled}

        def forward(x):  # fall back to eager, once, if compilation fails on first use
            try:
                return state["fn"](x)
            except Exception as e:  # noqa: BLE001 - any compiler failure means "run eagerly"
                if state["fn"] is module:
                    raise
                log.warning(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0]}); running eagerly")
                state["fn"] = module
                return module(x)

        return forward

    def train_batches(self) -> int:
        n = len(self.data.train)
        return min(n, self.tcfg.limit_train_batches) if self.tcfg.limit_train_batches else n

    def _to_device(self, x, y):
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)

    def _score(self, row: dict) -> float:
        return row["val_acc"] if self.tcfg.monitor == "val_acc" else -row["val_loss"]

    # --- the loop --------------------------------------------------------------------------
    def fit(self) -> None:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.epoch < self.tcfg.epochs:
                if self._run_epoch():
                    break
                if self.stop_signal is not None:  # arrived during validation: last.pt is current
                    self._interrupted()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_signal = signum
        if self.env.is_main:
            log.warning(f"{signal.Signals(signum).name} received: finishing the current step, then saving last.pt")

    def _interrupted(self):
        where = f"in epoch {self.epoch + 1} after batch {self.batch}" if self.batch else f"after epoch {self.epoch}"
        raise Interrupted(
            f"stopped by {signal.Signals(self.stop_signal).name} {where}; last.pt saved. "
            f"Resume with: python -m resexp <same overrides> trainer.resume={self.run_dir}"
        )

    def _run_epoch(self) -> bool:
        """One epoch; True when early stopping ends the run."""
        epoch = self.epoch
        t0 = time.perf_counter()
        images = self.train_epoch(epoch)
        seconds = time.perf_counter() - t0
        train = self.train_acc.compute()
        if not math.isfinite(train["loss"]):
            raise NonFiniteLoss(self._nonfinite_message(epoch))
        if self.stop_signal is not None:
            self.save_last()
            self._interrupted()
        row = {
            "epoch": epoch + 1,
            "train_loss": train["loss"], "train_acc": train["acc"], "train_acc5": train["acc5"],
            "val_loss": None, "val_acc": None, "val_acc5": None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": seconds, "images_per_s": images * self.env.world_size / max(seconds, 1e-9),
        }
        last_epoch = epoch + 1 == self.tcfg.epochs
        improved = stop = False
        if (epoch + 1) % self.tcfg.val_every == 0 or last_epoch:
            if self.env.distributed:  # BatchNorm statistics differ per rank: validate (and save) their mean
                average_buffers(self.eval_model())
            val = self.evaluate(self.eval_model(), self.data.val, self.tcfg.limit_val_batches)
            row.update(val_loss=val["loss"], val_acc=val["acc"], val_acc5=val["acc5"])
            improved = not self.best or self._score(row) > self._score(self.best)
            if improved:
                self.best = {k: row[k] for k in ("epoch", "val_loss", "val_acc", "val_acc5", "train_loss", "train_acc")}
                self.bad_evals = 0
                self.save_best()
            else:
                self.bad_evals += 1
                patience = self.tcfg.early_stopping_patience
                stop = patience is not None and self.bad_evals >= patience
        self.history.append(row)
        self.epoch, self.batch = epoch + 1, 0
        self.train_acc = Accumulator(self.device)
        self.save_last()
        self.logger.scalars({
            "train/loss": row["train_loss"], "train/acc": row["train_acc"], "val/loss": row["val_loss"],
            "val/acc": row["val_acc"], "val/acc5": row["val_acc5"], "lr": row["lr"], "throughput": row["images_per_s"],
        }, step=epoch + 1)
        self.logger.epoch_line(row, self.tcfg.epochs, improved)
        self.write_metrics(status="running")
        if stop:
            log.info(f"early stopping: {self.tcfg.monitor} has not improved for {self.bad_evals} validations")
        return stop

    def train_epoch(self, epoch: int) -> int:
        """Train from self.batch to the end of the epoch (or a stop signal); returns images seen."""
        self.model.train()
        loader = self.data.train
        loader.set_epoch(epoch, start_batch=self.batch)
        n_batches = self.train_batches()
        every = self.tcfg.log_every_n_steps
        logged: list[tuple[int, torch.Tensor]] = []
        accumulate = self.tcfg.accumulate  # DictConfig reads cost ~10-40 us: none inside the loop
        images = 0
        bar = self.logger.bar(n_batches, self.batch, f"epoch {epoch + 1}/{self.tcfg.epochs}")
        for i, (x, y) in enumerate(loader, start=self.batch):
            if i >= n_batches:
                break
            x, y = self._to_device(x, y)
            loss, logits = self.train_step(x, y, step_now=(i + 1) % accumulate == 0 or i + 1 == n_batches)
            self.train_acc.update(loss, logits, y)
            images += y.shape[0]
            self.batch = i + 1
            bar.update()
            if every and self.global_step % every == 0 and (i + 1) % accumulate == 0:
                logged.append((self.global_step, loss.detach()))
                # The epoch's loss sum turns NaN/Inf with the first non-finite loss: one host sync
                # per logging interval, no per-step flag.
                if not torch.isfinite(self.train_acc.sums[0]).item():
                    break
            if self.stop_signal is not None:
                break
        bar.close()
        if logged:
            self.logger.step_losses([s for s, _ in logged], torch.stack([v for _, v in logged]).float().tolist())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return images

    def train_step(self, x: torch.Tensor, y: torch.Tensor, step_now: bool):
        target = y
        if self.mixer is not None:
            x, target = self.mixer(x, y)
        if self.cuda_graphs:  # a new step: the graphs may reuse the previous step's output memory
            torch.compiler.cudagraph_mark_step_begin()
        sync = nullcontext() if step_now or self.ddp is None else self.ddp.no_sync()
        with sync:
            with self.autocast:
                logits = self.train_forward(x)
                loss = self.criterion(logits.float(), target)
            self.scaler.scale(loss / self._accumulate if self._accumulate > 1 else loss).backward()
        if step_now:
            if self._grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self._grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update()
            self.global_step += 1
        return loss.detach(), logits.detach()

    def eval_model(self):
        """The weights that validation judges and best.pt keeps: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader, limit: int | None = None, collect: bool = False) -> dict:
        """Loss, top-1 and top-5 over the loader (all ranks); with collect, also the predictions."""
        model.eval()
        forward = self.eval_forward if model is self.model else model
        acc = Accumulator(self.device)
        preds, targets = [], []
        loader.set_epoch(0)
        for i, (x, y) in enumerate(loader):
            if limit and i >= limit:
                break
            x, y = self._to_device(x, y)
            with self.autocast:
                logits = forward(x)
                if self.tcfg.tta_flip:
                    logits = (logits + forward(x.flip(3))) / 2
            logits = logits.float()
            acc.update(F.cross_entropy(logits, y), logits, y)
            if collect:
                preds.append(logits.softmax(1).cpu())
                targets.append(y.cpu())
        out = acc.compute()
        if collect:
            out["probs"] = torch.cat(preds) if preds else torch.empty(0)
            out["targets"] = torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)
        return out

    def _nonfinite_message(self, epoch: int) -> str:
        return (
            f"the training loss became NaN/Inf in epoch {epoch + 1} (step {self.global_step}); stopped. "
            f"best.pt is untouched. Try a lower optimizer.lr, trainer.grad_clip=1.0 or trainer.precision=32"
        )

    # --- checkpoints -------------------------------------------------------------------------
    def common_state(self) -> dict:
        return {"config": to_plain(self.cfg), "meta": self.meta}

    def save_best(self) -> None:
        if self.env.is_main:
            state = {"model": self.eval_model().state_dict(), "best": dict(self.best), **self.common_state()}
            checkpoint.atomic_save(state, self.ckpt_dir / "best.pt")

    def save_last(self) -> None:
        if not self.env.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "batch": self.batch, "global_step": self.global_step,
            "best": dict(self.best), "history": list(self.history), "bad_evals": self.bad_evals,
            "train_acc": self.train_acc.state_dict(),
            "rng": rng_state(),
            **self.common_state(),
        }
        checkpoint.atomic_save(state, self.ckpt_dir / "last.pt")

    def load_last(self, path: Path) -> None:
        state = checkpoint.load(path, map_location=self.device)
        if "optimizer" not in state:
            raise checkpoint.CheckpointError(f"{path} is not a last.pt training checkpoint (no optimizer state)")
        checkpoint.check_compatible(state["model"], self.model, path)
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.global_step = state["epoch"], state["batch"], state["global_step"]
        self.best, self.history, self.bad_evals = state["best"], state["history"], state["bad_evals"]
        self.train_acc.load_state_dict(state["train_acc"])
        set_rng_state(state["rng"])
        # Resumed into another run directory: bring the best-so-far along, or a resumed run that
        # never improves on it would end without a best.pt to re-evaluate; and the state itself, so
        # that the new directory can be resumed from even before its first epoch ends.
        source_best, best = Path(path).parent / "best.pt", self.ckpt_dir / "best.pt"
        if self.env.is_main and self.best and source_best.is_file() and not best.exists():
            checkpoint.atomic_save(checkpoint.load(source_best), best)
        if not (self.ckpt_dir / "last.pt").exists():
            self.save_last()

    def write_metrics(self, status: str, **extra) -> dict:
        last = self.history[-1] if self.history else {}
        metrics = {"status": status, "best": self.best, "last": last, "history": self.history,
                   "params": self.meta["params"], **extra}
        if self.env.is_main:
            write_json(metrics, self.run_dir / "metrics.json")
        return metrics
