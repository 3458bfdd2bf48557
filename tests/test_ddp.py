"""DistributedDataParallel on CPU (Gloo): `torchrun --nproc_per_node=2 -m resexp` trains like one process
(run in-process here) with the whole batch, writes one run directory, and resumes (rank 0 writes last.pt,
every rank loads it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resexp.config import compose
from resexp.train import run

# Global batch B=32: one process with 32, or two with 16 each (their union is the one-process batch).
# A constant schedule, so that 2 epochs resumed to 3 are the same run as 3 epochs straight. Zero-init
# residual branches: each unit starts as its shortcut, so the ranks' half-batch BatchNorm statistics
# barely move the first epoch's curve away from the one-process run's.
JOB = ["data=synthetic", "data.num_samples=512", "data.image_size=16", "data.num_classes=4",
       "model.stages.depths=[1,1,1]", "model.zero_init_residual=true", "optimizer.lr=0.1", "scheduler=constant",
       "trainer.checkpoint_every_n_steps=5", "trainer.progress=false", "trainer.report=false"]


def launch(cwd: Path, *args: str, nproc: int) -> subprocess.Popen:
    """`torchrun --nproc_per_node=nproc -m resexp ARGS` in cwd, started."""
    torchrun = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *torchrun, "-m", "resexp", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen, cwd: Path, before: set) -> Path:
    """Waits for the launch; returns the one run directory it made."""
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-6000:]
    made = [p for p in set(cwd.glob("outputs/*/*")) - before if p.is_dir()]
    assert len(made) == 1, made  # ranks > 0 made no directory of their own
    return made[0]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one_process_share_one_run_directory_and_resume(tmp_path):
    (tmp_path / "straight").mkdir()
    straight = launch(tmp_path / "straight", *JOB, "data.batch_size=16", "trainer.epochs=3", nproc=2)
    proc = launch(tmp_path, *JOB, "data.batch_size=16", "trainer.epochs=2", nproc=2)
    run(compose([*JOB, "data.batch_size=32", "trainer.epochs=3"]), run_dir=tmp_path / "one")  # meanwhile
    part = finish(proc, tmp_path, set())
    assert (part / ".hydra/config.yaml").is_file() and (part / "checkpoints/last.pt").is_file()
    writers = {f.name.split(".")[-2] for f in (part / "tb").glob("events.out.tfevents.*")}
    assert len(writers) == 1  # one process id: only rank 0 writes TensorBoard
    # "interrupted" after 2 epochs: resume=auto finds part's last.pt; both ranks load it
    proc = launch(tmp_path, *JOB, "data.batch_size=16", "trainer.epochs=3", "trainer.resume=auto", nproc=2)
    two = finish(proc, tmp_path, {part})
    one = tmp_path / "one"
    # 2 epochs resumed to 3 are 3 straight, bit for bit: weights, optimizer state, history
    a, b = (torch.load(d / "checkpoints/last.pt", weights_only=True)
            for d in (finish(straight, tmp_path / "straight", set()), two))
    torch.testing.assert_close((a["model"], a["optimizer"]["state"]), (b["model"], b["optimizer"]["state"]),
                               rtol=0, atol=0)
    untimed = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]  # noqa: E731
    assert untimed(a["history"]) == untimed(b["history"])

    a, b = metrics(one), metrics(two)
    assert b["status"] == "completed" and b["resumed_from"] == str(part / "checkpoints/last.pt")
    assert [r["epoch"] for r in b["history"]] == [1, 2, 3]
    assert abs(a["best"]["val_acc"] - b["best"]["val_acc"]) <= 0.005, (a["best"], b["best"])
    # the same global batches and mean gradients (BatchNorm sees half batches): the curves agree
    ha, hb = a["history"], b["history"]
    assert hb[0]["train_loss"] == pytest.approx(ha[0]["train_loss"], rel=0.03)
    for ra, rb in zip(ha, hb, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=0.3), (ra, rb)


# `torchrun ... -m resexp`, with SIGTERM delivered to rank 1 alone during its 5th training micro-batch
SIGNAL_TO_RANK_1 = """
import os, signal
from resexp.__main__ import main
from resexp.train.trainer import Trainer

step, calls = Trainer.train_step, [0]

def train_step(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 5 and os.environ["RANK"] == "1":
        signal.raise_signal(signal.SIGTERM)
    return step(self, *args, **kwargs)

Trainer.train_step = train_step
main()
"""


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    script = tmp_path / "signal_to_rank_1.py"
    script.write_text(SIGNAL_TO_RANK_1)
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script)]
    out = subprocess.run([sys.executable, *torchrun, *JOB, "data.batch_size=8", "trainer.epochs=2"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    (run_dir,) = tmp_path.glob("outputs/*/*")
    # the processes vote every 8 steps (StopVote.EVERY): rank 1's flag went into the vote at step 8, whose
    # sum both read at step 16 (of 29 in the epoch); they stopped together there, and last.pt says so
    assert metrics(run_dir)["status"] == "interrupted", out.stderr[-3000:]
    last = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert (last["epoch"], last["batch"], last["global_step"]) == (0, 16, 16)
    assert "error: stopped by a signal to another process in epoch 1 after batch 16; last.pt saved" in out.stderr
    assert "error: stopped by SIGTERM in epoch 1 after batch 16; last.pt saved" in out.stderr
