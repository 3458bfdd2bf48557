"""How every command reports a user's mistake: one line `error: ...` on stderr and exit status 2.

`HYDRA_FULL_ERROR=1` re-raises instead, to show the traceback (Hydra's own switch, so one
variable serves `python -m resexp` and the helper commands alike).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
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
