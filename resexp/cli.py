"""How every command reports a user's mistake: one line `error: ...` on stderr and exit status 2.

`HYDRA_FULL_ERROR=1` re-raises instead, to show the traceback (Hydra's own switch, so one
variable serves `python -m resexp` and the helper commands alike).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from resexp.errors import ResexpError

FULL_ERROR = "HYDRA_FULL_ERROR"
USER_FULL_ERROR = "RESEXP_USER_FULL_ERROR"  # what the user set, while `python -m resexp` sets FULL_ERROR for Hydra


def full_error() -> bool:
    """Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1)."""
    return os.environ.get(USER_FULL_ERROR, os.environ.get(FULL_ERROR)) == "1"


def exit_with_error(err: BaseException, line: str | None = None, code: int = 2) -> NoReturn:
    """`error: <line or err>` on stderr and exit `code`; with HYDRA_FULL_ERROR=1, raise `err` instead."""
    if full_error():
        raise err
    print(f"error: {line if line is not None else err}", file=sys.stderr)
    sys.exit(code)


def run_command(main: Callable[[list[str]], int], errors: tuple[type[BaseException], ...] = (ResexpError,),
                describe: Callable[[BaseException], str] = str) -> NoReturn:
    """Run `main(sys.argv[1:])` and exit with its status; `errors` are the user's and get one line."""
    try:
        code = main(sys.argv[1:])
    except errors as e:
        exit_with_error(e, describe(e))
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
