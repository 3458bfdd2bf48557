"""benchmarks/gpu.py, the one script a short GPU loan runs: its CPU dry run checks every step (each
resexp command's config composes, each benchmark's arguments parse), and it refuses bad input in one
line, before a second of device time is spent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402


@pytest.fixture
def data_root(tmp_path):
    """The layout the script takes (<root>/MNIST/raw/*.gz, <root>/FashionMNIST/raw/*.gz): names only,
    since the dry run reads no image."""
    for raw in ("MNIST", "FashionMNIST"):
        (tmp_path / "data" / raw / "raw").mkdir(parents=True)
        (tmp_path / "data" / raw / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    return tmp_path / "data"


def test_dry_run_checks_every_step_and_fits_the_budget(data_root, tmp_path, capsys):
    assert gpu.main(["--data", str(data_root), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("ok ")] == [s.name for s in gpu.STEPS]
    # one run (plus the machine's start, about a minute) leaves a rerun's worth of the 15-minute loan
    assert gpu.parser().parse_args(["--data", "d", "--out", "o"]).budget <= 500
    assert gpu.STEPS[0].limit_s <= 500 / 3  # the first steps always run
    assert not (tmp_path / "out" / "runs").exists()  # nothing ran


def test_dry_run_fails_on_a_config_key_the_gpu_run_would_reject(data_root, tmp_path, monkeypatch):
    from resexp.errors import ConfigError

    bad = gpu.Step("bad", "a misspelt key", "resexp", gpu._run("trainer.epoch=3"), 10)
    monkeypatch.setattr(gpu, "STEPS", [*gpu.STEPS[:1], bad])
    with pytest.raises(ConfigError, match="trainer.epoch"):
        gpu.main(["--data", str(data_root), "--out", str(tmp_path / "out"), "--dry-run"])


def test_dry_run_fails_on_a_benchmark_argument_its_script_would_reject(data_root, tmp_path, monkeypatch):
    bad = gpu.Step("bad", "an unknown case", "script", ["bench_train.py", "--cases", "resnet51_224"], 10)
    monkeypatch.setattr(gpu, "STEPS", [bad])
    with pytest.raises(SystemExit, match="unknown case resnet51_224"):
        gpu.main(["--data", str(data_root), "--out", str(tmp_path / "out"), "--dry-run"])


def test_missing_data_is_one_line_naming_the_folder(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--data", str(tmp_path),
                        "--out", str(tmp_path / "out"), "--dry-run"], capture_output=True, text=True)
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: --data {tmp_path}: no MNIST/raw/*.gz there (copy ../shared/data in)"


def test_a_step_that_would_not_fit_is_skipped_and_said(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "STEPS", [gpu.Step("long", "longer than the budget", "pytest", ["x"], 100)])
    monkeypatch.setattr(gpu, "environment", lambda: {"gpu": "none"})
    assert gpu.main(["--data", str(data_root), "--out", str(tmp_path / "out"), "--budget", "50"]) == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "**long**" in summary and "100 s > 50 s left" in summary
