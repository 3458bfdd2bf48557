"""The command line as a user types it: config printing, one-line errors, the default job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resexp.config import compose

ROOT = Path(__file__).resolve().parent.parent


def resexp(*args: str, cwd: Path | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "resexp", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def test_cfg_job_prints_the_composed_config_without_building(tmp_path):
    out = resexp("model=resnet50", "data=synthetic", "optimizer=adam", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name: resnet50" in out.stdout and "name: adam" in out.stdout
    assert not (tmp_path / "outputs").exists()  # nothing was built or run


def test_group_options_compose_on_the_command_line():
    cfg = compose(["model=resnet50", "model/block=preact_bottleneck", "model/stages=r101"])
    assert cfg.model.block.name == "preact_bottleneck" and list(cfg.model.stages.depths) == [3, 4, 23, 3]


# One case per kind of error path (Hydra composition, registry, trainer choice), all caught before any
# data is read; the messages of the rest are asserted in test_config.py, test_models.py, test_data.py.
@pytest.mark.parametrize(
    "args, expected",
    [
        (["trainer.epoch=3"], "trainer.epoch"),  # misspelt key: named in full
        (["optimizer.name=sgdd"], "choose one of: adam, adamw, sgd"),  # registry: valid names
        (["trainer.precision=8"], "trainer.precision"),  # checked when the run starts
        (["trainer.compile_mode=fast"], "not one of: default, reduce-overhead, max-autotune"),
        # names are checked before the data set is read (that root does not exist)
        (["data=image_folder", "data.root=/nonexistent", "optimizer.name=sgdd"], "unknown optimizer 'sgdd'"),
        (["data=image_folder", "data.root=/nonexistent", "model=resnet18", "model.pretrained=IMAGENET1K_V9"],
         "unknown weights 'IMAGENET1K_V9' for resnet18; choose one of: IMAGENET1K_V1, DEFAULT"),
        (["data=image_folder", "data.root=/nonexistent", "model.pretrained=/nonexistent/w.pt"],
         "model.pretrained: no such file: /nonexistent/w.pt"),
        (["data=image_folder", "data.root=/nonexistent", "trainer.finetune_from=/nonexistent/best.pt"],
         "trainer.finetune_from: no such file: /nonexistent/best.pt"),
    ],
)
def test_user_errors_are_one_clear_line_without_traceback(tmp_path, in_process, capsys, args, expected):
    code = in_process(tmp_path, *args, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    err = capsys.readouterr().err
    assert code != 0
    assert expected in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_a_user_error_exits_2_with_one_line(tmp_path):  # in a real process: the exit status users see
    out = resexp("optimizer.name=sgdd", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: unknown optimizer 'sgdd'; choose one of: adam, adamw, sgd"], out.stderr


def test_hydra_full_error_lets_the_exception_through_for_its_traceback(tmp_path, in_process, monkeypatch):
    from resexp.errors import ConfigError

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="unknown optimizer 'sgdd'"):  # uncaught: Python prints the traceback
        in_process(tmp_path, "optimizer.name=sgdd", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}")


@pytest.mark.slow
@pytest.mark.alone
def test_default_job_reaches_98_percent_on_digits_in_about_20_seconds(tmp_path):
    # `python -m resexp` through benchmarks/first_step.py, as bench_e2e times it: the same CLI entry
    # point (resexp.__main__.main) plus a one-shot optimizer hook that prints the first step's time.
    all_cores = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.time()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "first_step.py")], capture_output=True,
                         text=True, cwd=tmp_path, env={**all_cores, "RESEXP_T0": repr(start)}, timeout=300)
    seconds = time.time() - start
    assert out.returncode == 0, out.stderr
    (metrics_path,) = tmp_path.glob("outputs/*/*/metrics.json")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["best"]["val_acc"] >= 0.98, metrics["best"]
    run_dir = metrics_path.parent
    for name in (".hydra/config.yaml", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    (first_step,) = [float(x.split()[1]) for x in out.stderr.splitlines() if x.startswith("FIRST_STEP ")]
    print(f"default job: {seconds:.1f} s, first step after {first_step:.1f} s, "
          f"best val acc {metrics['best']['val_acc']:.4f}")
    # measured 18-22 s on an idle 2-core CPU until 2026-12-03; on 2026-12-04 the same machine kind ran it in
    # 35-38 s idle, and the commit before that day's changes in 35-68 s: the bound is the machine's, with room
    assert 0 < first_step < seconds < 60


def _exit_seconds(tmp_path: Path, body: str, quick: bool) -> float:
    """Seconds from a child's last line to its exit: `body` runs, with or without exit_quickly()."""
    code = "import sys\n" + ("from resexp.cli import exit_quickly\nexit_quickly()\nexit_quickly()\n" if quick else "")
    code += body + "\nsys.stdout.write('up\\n')\nsys.stdout.flush()\n"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert p.stdout.readline() == "up\n"
    t = time.perf_counter()
    assert p.wait(timeout=60) == 0
    return time.perf_counter() - t


# half a million objects alive at the end, each in a cycle (as a big library's classes and functions are)
HEAP = ("class Node:\n    def __init__(self, i):\n        self.i, self.me = i, self\n"
        "keep = [Node(i) for i in range(500_000)]")


@pytest.mark.alone
def test_a_command_exits_without_walking_its_live_objects_again(tmp_path):
    times = {quick: sorted(_exit_seconds(tmp_path, HEAP, quick) for _ in range(3)) for quick in (False, True)}
    assert times[True][1] < 0.6 * times[False][1], times  # measured 0.065 s against 0.2 s


def test_exiting_quickly_still_finalizes_what_is_garbage_at_the_end(tmp_path):
    # an object in a reference cycle whose finalizer writes its file: only a collection runs it (a bare
    # gc.freeze() at exit would lose the file's contents)
    body = ("class Holder:\n    def __del__(self):\n        self.f.write(' and closed')\n        self.f.close()\n"
            "h = Holder()\nh.me = h\nh.f = open('kept.txt', 'w')\nh.f.write('written')\ndel h")
    _exit_seconds(tmp_path, body, quick=True)
    assert (tmp_path / "kept.txt").read_text() == "written and closed"
