"""DistributedDataParallel on CPU (Gloo): `torchrun --nproc_per_node=2 -m resexp` trains like one process
with the whole batch, writes one run directory, and resumes (rank 0 writes last.pt, every rank loads it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Global batch B=32: one process with 32, or two with 16 each (their union is the one-process batch).
# A constant schedule, so that 2 epochs resumed to 3 are the same run as 3 epochs straight.
JOB = ["data=synthetic", "data.num_samples=512", "data.image_size=16", "data.num_classes=4",
       "model.stages.depths=[1,1,1]", "optimizer.lr=0.1", "scheduler=constant", "trainer.progress=false",
       "trainer.report=false"]


def launch(cwd: Path, *args: str, nproc: int | None = None) -> Path:
    """Run resexp (under torchrun with nproc) in cwd; returns the one run directory it made."""
    before = set(cwd.glob("outputs/*/*"))
    torchrun = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"] if nproc else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, *torchrun, "-m", "resexp", *args], cwd=cwd, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    made = [p for p in set(cwd.glob("outputs/*/*")) - before if p.is_dir()]
    assert len(made) == 1, made  # ranks > 0 made no directory of their own
    return made[0]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one_process_share_one_run_directory_and_resume(tmp_path):
    one = launch(tmp_path, *JOB, "data.batch_size=32", "trainer.epochs=3")
    part = launch(tmp_path, *JOB, "data.batch_size=16", "trainer.epochs=2", nproc=2)
    assert (part / ".hydra/config.yaml").is_file() and (part / "checkpoints/last.pt").is_file()
    writers = {f.name.split(".")[-2] for f in (part / "tb").glob("events.out.tfevents.*")}
    assert len(writers) == 1  # one process id: only rank 0 writes TensorBoard
    # "interrupted" after 2 epochs: resume=auto finds part's last.pt; both ranks load it
    two = launch(tmp_path, *JOB, "data.batch_size=16", "trainer.epochs=3", "trainer.resume=auto", nproc=2)

    a, b = metrics(one), metrics(two)
    assert b["status"] == "completed" and b["resumed_from"] == str(part / "checkpoints/last.pt")
    assert [r["epoch"] for r in b["history"]] == [1, 2, 3]
    assert abs(a["best"]["val_acc"] - b["best"]["val_acc"]) <= 0.005, (a["best"], b["best"])
    # the same global batches and mean gradients (BatchNorm sees half batches): the curves agree
    ha, hb = a["history"], b["history"]
    assert hb[0]["train_loss"] == pytest.approx(ha[0]["train_loss"], rel=0.03)
    for ra, rb in zip(ha, hb, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=0.3), (ra, rb)
