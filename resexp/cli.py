"""What every resexp command shares: its `key=value` arguments read one way (`Command.parse`), and a
user's mistake reported one way (`exit_with_error`: one line `error: [<command>: ]...` on stderr, exit 2).

The commands are the modules `python -m` runs, one module each, with nothing but the command in it:
`resexp` (__main__.py: the Hydra app that trains; Hydra reads its overrides), `resexp.predict`,
`resexp.evaluate`, `resexp.export`, `resexp.summary` (its arguments are the training command's
overrides), `resexp.report` and `resexp.pack`.

`HYDRA_FULL_ERROR=1` re-raises instead of printing the line, to show the traceback (Hydra's own switch,
so one variable serves `python -m resexp` and the other commands alike).
"""

from __future__ import annotations

import atexit
import errno
import gc
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

from resexp.errors import ConfigError, ResexpError, error_line

FULL_ERROR = "HYDRA_FULL_ERROR"
USER_FULL_ERROR = "RESEXP_USER_FULL_ERROR"  # what the user set, while `python -m resexp` sets FULL_ERROR for Hydra


# ------------------------------------------------------------------------------------ arguments
@dataclass(frozen=True)
class Option:
    default: Any
    help: str
    required: bool = False


@dataclass(frozen=True)
class Command:
    """A command's arguments: `key=value` for its options (`--key value` and `--key=value` read the
    same), `<prefix><key>=value` passed through as overrides (`data.root=...`), and, where the command
    has a `positional` option, bare arguments (paths) that fill that option's list."""

    name: str  # `python -m resexp.<name>`
    about: str
    options: dict[str, Option]
    prefixes: dict[str, str] = field(default_factory=dict)  # prefix -> help; "" passes every key=value on
    positional: str | None = None

    def usage(self) -> str:
        args = [f"{k}=..." if o.required else f"[{k}=...]" for k, o in self.options.items() if k != self.positional]
        if self.positional:
            args.insert(0, f"{self.positional.upper()} [{self.positional.upper()} ...]")
        args += [f"[{p or 'key'}{'<key>' if p else ''}=value ...]" for p in self.prefixes]
        lines = [f"usage: python -m resexp.{self.name} {' '.join(args)}", self.about, ""]
        for k, o in self.options.items():
            name = self.positional.upper() if k == self.positional else f"{k}="
            lines.append(f"  {name:<14} {o.help}" + ("" if o.required or o.default is None
                                                     else f" (default {o.default})"))
        lines += [f"  {(p or 'key') + '*=':<14} {text}" for p, text in self.prefixes.items()]
        if "" not in self.prefixes:
            lines.append("  (--key value and --key=value are key=value too)")
        return "\n".join(lines)

    def parse(self, argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        """argv -> ({option: value}, [passed-through overrides as given]). Values are typed as YAML
        (1 -> int, true -> bool, null -> None, [a, b] -> list), the same for every command; a
        positional option keeps its arguments as typed (paths). Mistakes raise ConfigError naming
        the key and the valid keys; -h/--help prints the usage and exits 0."""
        values = {k: ([] if k == self.positional else o.default) for k, o in self.options.items()}
        passthrough: list[str] = []
        args, only_positional = list(argv), False
        while args:
            arg = args.pop(0)
            if only_positional:
                values[self.positional].append(arg)
            elif arg in ("-h", "--help"):
                print(self.usage())
                raise SystemExit(0)
            elif arg == "--" and self.positional:
                only_positional = True
            elif "" in self.prefixes:  # every argument is an override for another parser (summary: Hydra's)
                passthrough.append(arg)
            elif arg.startswith("--") and len(arg) > 2:
                key, sep, raw = arg[2:].partition("=")
                if not sep:
                    if not args:
                        raise ConfigError(f"--{key} needs a value: --{key} VALUE or {key}=VALUE")
                    raw = args.pop(0)
                self._set(values, passthrough, key, raw)
            elif (key := arg.partition("=")[0].strip()) and "=" in arg and KEY.fullmatch(key):
                self._set(values, passthrough, key, arg.partition("=")[2])
            elif self.positional:
                values[self.positional].append(arg)
            else:
                raise ConfigError(f"bad argument '{arg}': arguments are key=value (valid keys: {self.valid()})")
        missing = [k for k, o in self.options.items() if o.required and values[k] in (None, "", [])]
        if missing:
            raise ConfigError(f"missing {', '.join(self._spelt(k) for k in missing)} "
                              f"(python -m resexp.{self.name} --help for usage)")
        return values, passthrough

    def valid(self) -> str:
        return ", ".join([*self.options, *(p + "<key>" for p in self.prefixes if p)])

    def _set(self, values: dict, passthrough: list, key: str, raw: str) -> None:
        if any(key.startswith(p) and len(key) > len(p) for p in self.prefixes):
            passthrough.append(f"{key}={raw}")
        elif key not in self.options:
            hint = "; a path with '=' in it: write ./<path>" if self.positional else ""
            raise ConfigError(f"unknown key '{key}'; valid keys: {self.valid()}{hint}")
        elif key == self.positional:
            values[key].append(raw)
        else:
            values[key] = typed_value(key, raw)

    def _spelt(self, key: str) -> str:
        return f"{self.positional.upper()}" if key == self.positional else f"{key}=..."


KEY = re.compile(r"[A-Za-z_][\w.-]*")  # what may stand left of `=`; anything else is a positional (a path)


def typed_value(key: str, raw: str) -> Any:
    """A value as YAML types it (the way OmegaConf reads a config file); "" stays ""."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if raw == "":
        return ""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad value for {key}: {error_line(e, name=False)}") from None


# ------------------------------------------------------------------------------------ the process's end
def _collect_and_freeze() -> None:
    gc.collect()  # what is garbage now is collected, its finalizers run, as at any exit
    gc.freeze()  # the rest is alive until the process ends: finalization need not walk it again


def exit_quickly() -> None:
    """Make this process's exit skip Python's last walks over every object torch, torch._dynamo, Hydra and
    matplotlib made, which take longer than a small run's report (1.1 s against 0.4 s on 2 cores:
    benchmarks/RESULTS.md). Registered once, at exit (atexit): a command called inside another program
    (the tests) only moves that work to the program's own end."""
    atexit.unregister(_collect_and_freeze)
    atexit.register(_collect_and_freeze)


# ------------------------------------------------------------------------------------ errors
def full_error() -> bool:
    """Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1)."""
    return os.environ.get(USER_FULL_ERROR, os.environ.get(FULL_ERROR)) == "1"


def print_error(line: str, command: str | None = None) -> None:
    """The one way resexp tells a user what went wrong: `error: [<command>: ]<line>` on stderr."""
    print(f"error: {command + ': ' if command else ''}{line}", file=sys.stderr, flush=True)


def exit_with_error(err: BaseException, line: str | None = None, code: int = 2, command: str | None = None) -> NoReturn:
    """`error: ...` (the line, or `err` as one line) and exit `code`; with HYDRA_FULL_ERROR=1, raise `err`."""
    if full_error():
        raise err
    print_error(line if line is not None else error_line(err, limit=None, name=not isinstance(err, ResexpError)),
                command)
    sys.exit(code)


def run_command(main: Callable[[list[str]], int], errors: tuple[type[BaseException], ...] = (ResexpError,)) -> NoReturn:
    """Run `main(sys.argv[1:])` and exit with its status; `errors` are the user's and get one line,
    prefixed with the command's name (its module's COMMAND; `python -m` runs the module as __main__)."""
    spec = getattr(sys.modules.get(main.__module__), "COMMAND", None)
    command = spec.name if spec is not None else main.__module__.rpartition(".")[2]
    exit_quickly()
    try:
        code = main(sys.argv[1:])
    except errors as e:
        exit_with_error(e, command=command)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)


def name_too_long(e: OSError, argv: list[str] | None = None) -> str | None:
    """A path the file system refuses as too long (ENAMETOOLONG), as one line naming the override
    that set it; None for any other error."""
    if e.errno != errno.ENAMETOOLONG:
        return None
    name = str(e.filename or "")
    key = next((a.split("=", 1)[0] for a in (sys.argv[1:] if argv is None else argv)
                if "=" in a and name and (a.split("=", 1)[1] in name or name in a)), None)
    shown = name if len(name) <= 80 else f"{name[:60]}...({len(name)} characters)"
    return (f"{key + ': ' if key else ''}file name too long: {shown}; the file system takes at most "
            f"{_limit('PC_NAME_MAX', 255)} bytes a folder or file name, {_limit('PC_PATH_MAX', 4096)} a path")


def _limit(name: str, default: int) -> int:
    try:
        return os.pathconf("/", name)
    except (OSError, ValueError, AttributeError):
        return default


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """`values` set in os.environ for the block, and what was there before put back after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
