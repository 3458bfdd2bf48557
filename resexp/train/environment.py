"""Where and how a run executes: device, precision, seeding, determinism, process group."""

from __future__ import annotations

import atexit
import logging
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from resexp import ranks
from resexp.errors import ConfigError

log = logging.getLogger("resexp")

PRECISIONS = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}


@dataclass
class Env:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device='{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device=cuda but CUDA is not available here; use trainer.device=auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ConfigError(f"trainer.device='{name}' is not supported; use auto, cpu, cuda or cuda:N")
    return device


def setup(trainer_cfg) -> Env:
    """Join the torchrun process group when launched by torchrun, and pick this process's device."""
    _export_submitit_ranks()
    world_size, rank, local_rank = ranks.world_size(), ranks.rank(), ranks.local_rank()
    device = resolve_device(trainer_cfg.device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(_destroy_process_group)
    env = Env(device=device, rank=rank, world_size=world_size, local_rank=local_rank)
    if env.distributed and trainer_cfg.sync_batchnorm and device.type != "cuda":
        # PyTorch's SyncBatchNorm has no CPU kernel: the Trainer keeps per-process statistics instead.
        if env.is_main:
            log.warning("trainer.sync_batchnorm=true needs CUDA devices; on CPU each process keeps its own "
                        "BatchNorm statistics")
    return env


def _export_submitit_ranks() -> None:
    """The submitit launcher (hydra/launcher=slurm or local) with several tasks per job (tasks_per_node,
    nodes) starts one process per task: each is a DDP rank. Give them torchrun's variables."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shared_run_dir(run_dir: Path, env: Env) -> Path:
    """Under DDP, rank 0's run directory for every rank (each torchrun process composed its own)."""
    if not env.distributed:
        return run_dir
    box = [str(run_dir)]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision='{precision}' is not one of: {', '.join(PRECISIONS)}")
    if precision == "32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (PyTorch reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        if torch.are_deterministic_algorithms_enabled():  # the setter imports inductor: seconds at start-up
            torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True


def rng_state() -> dict:
    """Every RNG state as tensors and plain values, so `torch.load(weights_only=True)` reads it."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [version, torch.tensor(state, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    # .cpu(): a checkpoint loaded with map_location=cuda brings these tensors to the GPU, but numpy and
    # the RNG setters take host tensors
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """DDP: every rank's floating-point buffers (BatchNorm running statistics, which each rank updates
    from its own shard) replaced by their mean over the ranks, so all ranks hold the same model."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if buffers:
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= dist.get_world_size()
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
