"""Every command (`python -m resexp.<name>`) as users type it: the command lines the README shows
are read by the one parser (resexp.cli.Command), values are typed the same way for every command,
and a mistake is one line through the one formatter: `error: <command>: ...`, exit 2."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from resexp.cli import run_command
from resexp.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["predict", "evaluate", "export", "summary", "report", "pack"]


def documented() -> list[tuple[str, list[str]]]:
    """(command, arguments) of every `python -m resexp.<command> ...` line in the README."""
    out = []
    for m in re.finditer(r"python -m resexp\.(\w+) ([^`\n]*)", (ROOT / "README.md").read_text()):
        args = shlex.split(m[2].replace("<run dir>", "RUN"), comments=True)
        if args:  # a command line, not a mention of the command
            out.append((m[1], args))
    return out


def test_the_readme_shows_every_command():
    assert {name for name, _ in documented()} == set(COMMANDS)


@pytest.mark.parametrize("name, args", documented(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:40])
def test_every_documented_command_line_is_read(name, args):
    command = importlib.import_module(f"resexp.{name}").COMMAND
    values, overrides = command.parse(args)  # no error: every key it shows is the command's
    for arg in args:
        key, _, raw = arg.lstrip("-").partition("=")
        if key in command.options and key != command.positional:
            assert values[key] is not None, arg
        elif "=" in arg and command.prefixes:
            assert arg in overrides, arg


@pytest.mark.parametrize("name", COMMANDS)
def test_values_are_typed_the_same_way_by_every_command(name):
    command = importlib.import_module(f"resexp.{name}").COMMAND
    if "" in command.prefixes:  # summary: every argument is an override Hydra reads, passed on as typed
        args = ["model=resnet20", "'data.mean=[0.5]'", "+x=1", "~seed", "model/block=basic_pad"]
        assert command.parse(args) == ({}, args)
        return
    key = next(k for k, o in command.options.items() if k != command.positional and not o.required)
    cases = {"[1, 2]": [1, 2], "[a,b]": ["a", "b"], '"a b"': "a b", "'1'": "1", "a,b": "a,b", "null": None,
             "true": True, "3": 3, "0.5": 0.5, "x=y": "x=y", "/a/b c.jpg": "/a/b c.jpg", "": ""}
    required = [f"{k}=r" for k, o in command.options.items() if o.required and k not in (key, command.positional)]
    required += ["d"] if command.positional else []
    for raw, want in cases.items():
        for spelt in ([f"{key}={raw}"], [f"--{key}", raw], [f"--{key}={raw}"]):
            values, _ = command.parse([*spelt, *required])
            assert values[key] == want and type(values[key]) is type(want), (spelt, values[key])


@pytest.mark.parametrize("name", COMMANDS)
def test_help_prints_the_usage_and_exits_0(name, capsys):
    module = importlib.import_module(f"resexp.{name}")
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: python -m resexp.{name} ")


def _error(name: str, argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [name, *argv])
    with pytest.raises(SystemExit) as e:
        run_command(importlib.import_module(f"resexp.{name}").main)
    lines = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("name", [c for c in COMMANDS if c != "summary"])
def test_an_unknown_key_reads_the_same_for_every_command(name, monkeypatch, capsys):
    valid = ", ".join(importlib.import_module(f"resexp.{name}").COMMAND.options)
    assert _error(name, ["foo=1"], monkeypatch, capsys).startswith(
        f"error: {name}: unknown key 'foo'; valid keys: {valid}")


def test_summary_names_an_unknown_key_as_the_training_command_does(monkeypatch, capsys):
    # summary takes python -m resexp's overrides, so its errors are that command's, with its name before
    line = _error("summary", ["foo=1"], monkeypatch, capsys)
    assert line == ("error: summary: foo is not a key of the run config "
                    "(its keys: model, data, optimizer, scheduler, trainer, logger, seed)")


@pytest.mark.parametrize("name", [c for c in COMMANDS if c != "summary"])
def test_a_missing_value_and_a_bare_word_are_one_line(name, monkeypatch, capsys):
    line = _error(name, [], monkeypatch, capsys)
    assert line.startswith(f"error: {name}: missing ") and f"python -m resexp.{name} --help" in line, line
    if name != "report":  # report's bare arguments are its directories
        line = _error(name, ["oops"], monkeypatch, capsys)
        assert line.startswith(f"error: {name}: bad argument 'oops': arguments are key=value (valid keys: "), line


def test_hydra_full_error_raises_for_the_traceback(monkeypatch):
    from resexp import predict

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["predict", "foo=1"])
    with pytest.raises(ConfigError, match="unknown key 'foo'"):
        run_command(predict.main)


def test_report_takes_a_path_with_an_equals_sign_as_a_directory(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "optimizer=adam"  # hydra.sweep.subdir=${hydra.job.override_dirname} names them so
    sweep.mkdir()
    line = _error("report", [str(sweep)], monkeypatch, capsys)
    assert line == f"error: report: no runs (metrics.json) found below {sweep}", line


@pytest.mark.slow  # a process each (torch's import); the in-process tests above cover the parsing
@pytest.mark.parametrize("module", ["resexp", *(f"resexp.{c}" for c in COMMANDS)])
def test_python_dash_m_runs_every_command(module):
    """The real `python -m` entry: a bad key is the one line and exit 2 (the training command too)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run([sys.executable, "-m", module, "foo=1"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)
    name = module.partition(".")[2]
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {name + ': ' if name else ''}") and "'foo'" in done.stderr or \
        "foo is not a key" in done.stderr, done.stderr


def test_report_reads_directories_around_its_keys_and_after_a_double_dash():
    from resexp.report import COMMAND

    assert COMMAND.parse(["a", "out=o", "b/x=1"]) == ({"dirs": ["a", "b/x=1"], "out": "o"}, [])
    assert COMMAND.parse(["--out", "o", "--", "--odd", "k=v"]) == ({"dirs": ["--odd", "k=v"], "out": "o"}, [])
    with pytest.raises(ConfigError, match="^--out needs a value: --out VALUE or out=VALUE$"):
        COMMAND.parse(["a", "--out"])
