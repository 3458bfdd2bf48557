"""DistributedDataParallel on CPU (Gloo): `torchrun --nproc_per_node=2 -m resexp` trains like one process
with the whole batch, and writes one run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Global batch B=32: one process with 32, or two with 16 each (their union is the one-process batch).
JOB = ["data=synthetic", "data.num_samples=512", "data.image_size=16", "data.num_classes=4",
       "model.stages.depths=[1,1,1]", "optimizer.lr=0.2", "trainer.epochs=3", "trainer.progress=false"]


def launch(cwd: Path, *args: str, nproc: int | None = None) -> subprocess.CompletedProcess:
    torchrun = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"] if nproc else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, *torchrun, "-m", "resexp", *args], cwd=cwd, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_match_one_process_and_share_one_run_directory(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    launch(tmp_path / "one", *JOB, "data.batch_size=32")
    launch(tmp_path / "two", *JOB, "data.batch_size=16", nproc=2)

    runs = {}
    for name in ("one", "two"):
        dirs = [p for p in (tmp_path / name).glob("outputs/*/*") if p.is_dir()]
        assert len(dirs) == 1, dirs  # ranks > 0 made no directory of their own
        runs[name] = dirs[0]
    two = runs["two"]
    assert (two / ".hydra/config.yaml").is_file() and (two / "checkpoints/best.pt").is_file()
    writers = {f.name.split(".")[-2] for f in (two / "tb").glob("events.out.tfevents.*")}
    assert len(writers) == 1  # one process id: only rank 0 writes TensorBoard

    a, b = (json.loads((runs[n] / "metrics.json").read_text()) for n in ("one", "two"))
    assert b["status"] == "completed"
    assert abs(a["best"]["val_acc"] - b["best"]["val_acc"]) <= 0.005, (a["best"], b["best"])
    # the same global batches and mean gradients: the training curves agree closely
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=0.1, abs=0.05), (ra, rb)
