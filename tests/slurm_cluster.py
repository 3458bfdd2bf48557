"""A real one-node SLURM cluster for the tests marked `slurm` (Debian's slurm-wlm and munge, as root):
munged, then slurmctld and slurmd on localhost with a minimal slurm.conf of its own (SLURM_CONF, so a
machine's real configuration is never touched). Clusters come up one at a time (a lock), in a few
seconds; the tests skip, saying why, where SLURM is missing, the user is not root, or it does not start."""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CONF = """ClusterName=resexptest
SlurmctldHost=localhost
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation={state}/state
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
SlurmUser=root
SlurmdUser=root
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
MUNGE_PID = Path("/run/munge/munged.pid")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the SLURM tests start slurmctld/slurmd and need root"
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo") if shutil.which(b) is None
               and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        return f"SLURM is not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
    if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
        return "a slurmctld already runs on this machine; the tests start their own"
    return None


def _munge_answers() -> bool:
    return subprocess.run("munge -n | unmunge", shell=True, capture_output=True, timeout=10).returncode == 0


def _munged() -> None:
    """Start munged unless one answers; the one started here ends with the test session."""
    if _munge_answers():
        return
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True, timeout=30)
    for _ in range(50):
        if MUNGE_PID.is_file() and _munge_answers():
            atexit.register(_stop_munged, int(MUNGE_PID.read_text()))
            return
        time.sleep(0.1)
    pytest.skip("munged did not start (SLURM's authentication)")


def _stop_munged(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


@contextmanager
def cluster(state: Path):
    """A running cluster; yields the environment (SLURM_CONF) its commands need."""
    why = _why_not()
    if why:
        pytest.skip(why)
    with open("/tmp/resexp-slurm-tests.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _munged()
        for d in ("state", "spool"):
            (state / d).mkdir(parents=True, exist_ok=True)
        conf = state / "slurm.conf"
        conf.write_text(CONF.format(state=state, cpus=os.cpu_count() or 1))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        try:
            subprocess.run(["slurmctld"], env=env, check=True, timeout=30)
            subprocess.run(["slurmd", "-N", "localhost"], env=env, check=True, timeout=30)
            for _ in range(150):
                try:
                    out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True,
                                         timeout=5)
                except subprocess.TimeoutExpired:
                    continue
                if out.stdout.strip() == "idle":
                    break
                time.sleep(0.2)
            else:
                logs = "".join(p.read_text()[-400:] for p in state.glob("*.log"))
                pytest.skip(f"the one-node SLURM cluster did not come up in 30 s: {logs}")
            yield env
        finally:
            subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, timeout=30)
            for name in ("slurmctld.pid", "slurmd.pid"):
                _wait_gone(state / name)


def _wait_gone(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
