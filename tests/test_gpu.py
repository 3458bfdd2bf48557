"""The GPU fast path on a real CUDA device: bf16 + channels_last + torch.compile learn, fp16 with a
grad scaler, data resident on the GPU, no host synchronisation inside a training step, exact resume
in deterministic mode. Skipped where CUDA is missing (CI): run with `pytest -m gpu` on a GPU machine.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic test

from resexp.config import compose  # noqa: E402
from resexp.train import run  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# 5,120 learnable 32x32 RGB images: 4,096 train (16 batches of 256) and 1,024 val (2 of 512), so every
# batch has one shape and torch.compile builds one graph for training and one for evaluation.
GPU_TINY = [
    "model=resnet20", "data=synthetic", "data.num_samples=5120", "data.val_split=0.2", "data.image_size=32",
    "data.channels=3", "data.num_classes=10", "data.batch_size=256", "data.augment.crop_padding=4",
    "data.augment.flip=true", "optimizer=sgd", "optimizer.lr=0.2", "optimizer.nesterov=true",
    "optimizer.weight_decay=5e-4", "scheduler=cosine", "trainer.epochs=3", "trainer.device=cuda",
    "trainer.progress=false",
]
FAST = ["trainer.precision=bf16", "trainer.channels_last=true", "trainer.compile=true"]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def build_trainer(overrides: list[str]):
    """A Trainer exactly as resexp.train.pipeline builds one, without the run's logging and checkpoints."""
    from resexp.config import checked
    from resexp.data import build_data
    from resexp.models import build_model
    from resexp.records.facts import RunFacts
    from resexp.run_dir import RunPaths
    from resexp.train.environment import configure_determinism, seed_everything, setup
    from resexp.train.trainer import Trainer

    cfg = compose([*GPU_TINY, *overrides])
    env = setup(cfg.trainer)
    seed_everything(cfg.seed)
    configure_determinism(cfg.trainer.deterministic, env.device)
    data = build_data(cfg.data, device=env.device, seed=cfg.seed)
    info = data.info
    model = build_model(cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
                        image_size=info.image_size)
    facts = RunFacts.from_data(cfg.model.name, info, params=sum(p.numel() for p in model.parameters()))
    return Trainer(checked(cfg), model, data, env, RunPaths(Path(tempfile.mkdtemp())), facts)


# reduce-overhead: the training step replays CUDA graphs (evaluation with flip TTA compiles without them)
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_bf16_channels_last_compile_learns_as_well_as_fp32_with_data_on_the_gpu(tmp_path, caplog, mode):
    # the expected accuracy is what plain float32 eager training reaches on the same data and seed
    ref = run(compose([*GPU_TINY, "trainer.epochs=6"]), run_dir=tmp_path / "fp32")
    best = run(compose([*GPU_TINY, *FAST, f"trainer.compile_mode={mode}", "trainer.epochs=6", "trainer.tta_flip=true"]),
               run_dir=tmp_path / "fast")
    m = metrics(tmp_path / "fast")
    assert m["status"] == "completed"
    assert "torch.compile failed" not in caplog.text  # the compiled path ran, not the eager fallback
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert ref >= 0.5 and best >= ref - 0.05, (ref, m["history"])
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]


def test_data_is_resident_on_the_gpu_and_batches_are_channels_last():
    trainer = build_trainer(FAST)
    assert trainer.data.train.images.is_cuda and trainer.data.train.images.dtype == torch.uint8
    x, y = next(iter(trainer.data.train))
    assert x.is_cuda and y.is_cuda
    x, y = trainer._to_device(x, y)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert next(trainer.model.parameters()).is_cuda
    assert trainer.optimizer.defaults.get("fused") is True  # fused SGD on CUDA


def _sync_warnings(trainer, epoch: int, monkeypatch) -> list[str]:
    """Host synchronisations (torch.cuda sync debug mode) during one train_epoch, except the one
    deliberate torch.cuda.synchronize at its end that makes the epoch's timing honest."""
    real_synchronize = torch.cuda.synchronize

    def end_of_epoch_sync(device=None):
        torch.cuda.set_sync_debug_mode(0)
        real_synchronize(device)

    monkeypatch.setattr(torch.cuda, "synchronize", end_of_epoch_sync)
    trainer.state.batch = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_epoch(epoch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
            monkeypatch.setattr(torch.cuda, "synchronize", real_synchronize)
    # ("Synchronization debug mode is a prototype feature" is the switch's own one-time notice)
    return [str(w.message) for w in caught if "called a synchronizing" in str(w.message)]


@pytest.mark.parametrize("precision,compile_,extra", [("bf16", True, []), ("16", False, ["trainer.ema_decay=0.99"])])
def test_no_host_sync_inside_a_training_step(precision, compile_, extra, monkeypatch):
    # log_every_n_steps=0: no logging interval, so no flag read at all
    overrides = [f"trainer.precision={precision}", "trainer.channels_last=true", f"trainer.compile={compile_}",
                 "trainer.log_every_n_steps=0", *extra]
    trainer = build_trainer(overrides)
    trainer.train_epoch(0)  # warm-up: compilation, cuDNN autotuning, lazy CUDA state
    torch.cuda.synchronize()
    syncs = _sync_warnings(trainer, 1, monkeypatch)
    assert syncs == [], syncs[:3]
    # with a logging interval: one flag read per interval of 4 steps (16 steps), nothing else
    trainer.tcfg.log_every_n_steps = 4
    syncs = _sync_warnings(trainer, 2, monkeypatch)
    # >= 1: the detector does see a sync; <= 5: one per interval + the logged losses read at the epoch's end
    assert 1 <= len(syncs) <= 16 // 4 + 1, syncs[:6]


def test_fp16_with_grad_scaler_trains(tmp_path):
    run(compose([*GPU_TINY, "trainer.precision=16", "trainer.epochs=2"]), run_dir=tmp_path)
    m = metrics(tmp_path)
    assert m["status"] == "completed"
    assert all(r["train_loss"] == r["train_loss"] for r in m["history"])  # finite, not NaN
    last = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert last["scaler"]["scale"] > 0


def test_resume_on_cuda_is_exact_in_deterministic_mode(tmp_path):
    # a constant schedule does not depend on trainer.epochs, so 1 epoch + 1 more equals 2 straight
    base = [*GPU_TINY, "scheduler=constant", "trainer.deterministic=true", "trainer.epochs=2"]
    run(compose(base), run_dir=tmp_path / "full")
    run(compose([*base, "trainer.epochs=1"]), run_dir=tmp_path / "first")
    run(compose([*base, f"trainer.resume={tmp_path / 'first'}"]), run_dir=tmp_path / "second")
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "second/checkpoints/last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["epoch"] for r in metrics(tmp_path / "second")["history"]] == [1, 2]
