"""The training loop: the model and what updates it (optimizer, schedule, grad scaler, EMA), the
step, the epoch, and `fit`, which runs epochs, validates after them and calls the callbacks it was
built with (callbacks.py: checkpoints, logging, metrics.json, the end-of-run steps).

Where training stands is `TrainingState` (state.py), and everything outside the loop reads it through
`trainer.result` (result.py); checkpoint files are `Checkpoints` (checkpoint.py), the evaluation loop
is evaluation.py, and signals are signals.py.
Everything random in an epoch is a function of the seed, the epoch and the restored RNG
states, so a run resumed from `last.pt` continues bit for bit where it stopped (on CPU).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from resexp.errors import ResexpError
from resexp.optim import build_optimizer, build_scheduler
from resexp.records.epoch import EpochRecord, scores
from resexp.records.facts import RunFacts
from resexp.run_dir import RunPaths
from resexp.train import evaluation
from resexp.train.callbacks import Callback
from resexp.train.checkpoint import Checkpoints
from resexp.train.ema import EMA
from resexp.train.environment import Env, autocast, average_buffers
from resexp.train.result import RunResult
from resexp.train.signals import StopSignals, StopVote
from resexp.train.state import Monitor, TrainingState

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
    """Built whole: `settings` is the run's checked config (resexp.config.checked: a RunConfig, plain
    attribute reads inside the loop), `checkpoints` its best.pt/last.pt (None: none written) and
    `callbacks` everything else it does around the loop, called in their order after the checkpoints.

    Public: `fit()`, `result` (where the run stands), `data`, `env`, `eval_model()`, `evaluate()`,
    `save_last()`, `resume()`; the rest are the loop's own parts."""

    def __init__(self, settings, model: nn.Module, data, env: Env, paths: RunPaths, facts: RunFacts,
                 checkpoints: Checkpoints | None = None, callbacks: Sequence[Callback] = (),
                 progress: bool = False):
        self.cfg, self.tcfg, self.data, self.env = settings, settings.trainer, data, env
        self.checkpoints = checkpoints or Checkpoints(paths, {}, facts, write=False)
        self.callbacks = [self.checkpoints, *callbacks]
        self.progress = progress and env.is_main
        self.signals = StopSignals(announce=env.is_main, vote=StopVote() if env.distributed else None)
        t = self.tcfg
        self.device = env.device
        self.autocast = autocast(self.device, t.precision)

        channels_last = t.channels_last if t.channels_last is not None else self.device.type == "cpu"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        if env.distributed and t.sync_batchnorm and self.device.type == "cuda":  # no CPU kernel
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.ema = EMA(self.model, t.ema_decay, t.ema_warmup) if t.ema_decay is not None else None
        eval_mode = COMPILE_MODES[t.compile_mode]
        self.cuda_graphs = t.compile and eval_mode != t.compile_mode  # graph modes: evaluation runs without
        self.eval_forward = self._compiled(self.model, eval_mode)
        self.ddp = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                           else None) if env.distributed else None
        self.train_forward = self._compiled(self.ddp or self.model, t.compile_mode)

        self.steps_per_epoch = math.ceil(self.train_batches() / t.accumulate)
        global_batch = data.train.batch_size * env.world_size * t.accumulate
        self.optimizer = build_optimizer(self.model, settings.optimizer, batch_size=global_batch, device=self.device)
        self.scheduler = build_scheduler(self.optimizer, settings.scheduler, epochs=t.epochs,
                                         steps_per_epoch=self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        self.mixer = _mixer(t, facts.num_classes)
        self.state = TrainingState(Monitor(t.monitor, t.early_stopping_patience), self.device)
        self.result = RunResult(paths, facts, self.state, is_main=env.is_main, report=t.report, epochs=t.epochs)

    # --- the run -----------------------------------------------------------------------------
    def fit(self) -> RunResult:
        """Train (`loop`), then the callbacks' end-of-run steps. A run that stops (an error, a signal)
        calls every callback's on_exception and raises the error they leave in result.error (one line)."""
        r = self.result
        try:
            self._call("on_fit_start")
            self.loop()
            for callback in self.callbacks:
                r.stage = callback.stage or r.stage
                callback.on_fit_end(self)
            r.status = "completed"
            return r
        except (Exception, KeyboardInterrupt) as e:
            r.status, r.error = "failed", e
            self._call("on_exception", e)
            if r.error is e:
                raise
            raise r.error from e

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # --- the loop --------------------------------------------------------------------------
    def loop(self) -> None:
        """Train until trainer.epochs, early stopping or a stop signal; last.pt after every epoch (and every
        trainer.checkpoint_every_n_steps optimizer steps inside one)."""
        s, epochs = self.state, self.tcfg.epochs
        with self.signals:
            while s.epoch < epochs:
                t0 = time.perf_counter()
                images = self.train_epoch(s.epoch)
                seconds = time.perf_counter() - t0
                train = s.train_acc.compute()
                if not math.isfinite(train["loss"]):
                    raise NonFiniteLoss(self._nonfinite_message(s.epoch))
                if self.signals.now():  # mid-epoch: last.pt keeps the batch position
                    self.save_last()
                    raise self.signals.interrupted(s.epoch, s.batch, self.result.paths.root)
                record = self._epoch_record(train, seconds, images)
                validate = (s.epoch + 1) % self.tcfg.val_every == 0 or s.epoch + 1 == epochs
                improved = self.validate(record) if validate else None
                s.end_epoch(record)
                self._call("on_epoch_end", record, improved)  # last.pt first: the checkpoints' callback
                if improved is False and s.monitor.should_stop:
                    log.info(f"early stopping: {s.monitor.key} has not improved for {s.monitor.bad_evals} validations")
                    break
                if self.signals.now():  # arrived during validation: last.pt is current
                    raise self.signals.interrupted(s.epoch, s.batch, self.result.paths.root)

    def train_epoch(self, epoch: int) -> int:
        """Train from state.batch to the end of the epoch (or a stop signal); returns images seen.
        A stop, and last.pt every trainer.checkpoint_every_n_steps, wait for the end of an
        accumulation window: its partial gradients are in no checkpoint (under DDP each rank holds its own)."""
        s = self.state
        self.model.train()
        loader = self.data.train
        loader.set_epoch(epoch, start_batch=s.batch)
        n_batches = self.train_batches()
        every, save_every = self.tcfg.log_every_n_steps, self.tcfg.checkpoint_every_n_steps
        logged: list[tuple[int, torch.Tensor]] = []
        accumulate = self.tcfg.accumulate
        images = 0
        bar = self._progress_bar(n_batches, s.batch, epoch)
        for i, (x, y) in enumerate(loader, start=s.batch):
            if i >= n_batches:
                break
            x, y = self._to_device(x, y)
            step_now = (i + 1) % accumulate == 0 or i + 1 == n_batches
            loss, logits = self.train_step(x, y, step_now=step_now)
            s.train_acc.update(loss, logits, y)
            images += y.shape[0]
            s.batch = i + 1
            bar.update()
            if not step_now:
                continue
            if every and s.global_step % every == 0:
                logged.append((s.global_step, loss.detach()))
                # The epoch's loss sum turns NaN/Inf with the first non-finite loss: one host sync
                # per logging interval, no per-step flag.
                if not torch.isfinite(s.train_acc.sums[0]).item():
                    break
            if self.signals.at_step(s.global_step):
                break
            if save_every and s.global_step % save_every == 0 and i + 1 < n_batches:  # the epoch's end saves anyway
                self.save_last()
        bar.close()
        losses = torch.stack([v for _, v in logged]).float().tolist() if logged else []
        self.result.step_losses = [(step, loss) for (step, _), loss in zip(logged, losses, strict=True)]
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
            self.scaler.scale(loss / self.tcfg.accumulate if self.tcfg.accumulate > 1 else loss).backward()
        if step_now:
            if self.tcfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.state.global_step)
            self.state.global_step += 1
        return loss.detach(), logits.detach()

    def validate(self, record: EpochRecord) -> bool:
        """Fill the record's val columns; True (and best.pt written) when this is the best epoch yet."""
        model = self.eval_model()
        if self.env.distributed:  # BatchNorm statistics differ per rank: validate (and save) their mean
            average_buffers(model)
        val = self.evaluate(model, self.data.val, self.tcfg.limit_val_batches)
        for key, value in scores("val", val).items():
            setattr(record, key, value)
        improved = self.state.monitor.update(record)
        self._call("on_validation_end", record, improved)
        return improved

    def evaluate(self, model: nn.Module, loader, limit: int | None = None, collect: bool = False) -> dict:
        """evaluation.evaluate with this run's device, precision, TTA and (for self.model) compiled forward."""
        return evaluation.evaluate(
            model, loader, self.device, tta_flip=self.tcfg.tta_flip, autocast=self.autocast, limit=limit,
            forward=self.eval_forward if model is self.model else model, collect=collect,
            memory_format=self.memory_format)

    def eval_model(self):
        """The weights that validation judges and best.pt keeps: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    # --- checkpoints and metrics.json -----------------------------------------------------------
    def parts(self) -> dict:
        """What last.pt saves besides the training state, by its key there."""
        return {"model": self.model, "ema": self.ema, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.scaler}

    def save_last(self) -> None:
        self.checkpoints.save_last(self.parts(), self.state)

    def resume(self, path) -> None:
        self.checkpoints.resume(path, self.parts(), self.state, self.device)

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

    def _progress_bar(self, total: int, initial: int, epoch: int):
        return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{self.tcfg.epochs}", leave=False,
                    disable=not self.progress, unit="batch", dynamic_ncols=True)

    def _to_device(self, x, y):
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)

    def _epoch_record(self, train: dict, seconds: float, images: int) -> EpochRecord:
        """history's record of the epoch just trained; validate() fills the val columns."""
        return EpochRecord(epoch=self.state.epoch + 1, **scores("train", train),
                           lr=self.optimizer.param_groups[0]["lr"], seconds=seconds,
                           images_per_s=images * self.env.world_size / max(seconds, 1e-9))

    def _nonfinite_message(self, epoch: int) -> str:
        return (
            f"the training loss became NaN/Inf in epoch {epoch + 1} (step {self.state.global_step}); stopped. "
            f"best.pt is untouched. Try a lower optimizer.lr, trainer.grad_clip=1.0 or trainer.precision=32"
        )
