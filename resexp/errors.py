"""Errors a user can fix by changing the command line, config or files.

The command-line entry points print these as one line (no traceback) and exit non-zero;
`HYDRA_FULL_ERROR=1` re-raises them with the full traceback.
"""


class ResexpError(Exception):
    """A problem with the user's input (config, files, checkpoint), not a bug in resexp."""


class ConfigError(ResexpError, ValueError):
    """A config value that cannot be used: unknown name, bad combination, missing required key."""


class DataError(ResexpError):
    """Data that cannot be read: a missing root, a bad file, an empty class folder."""


class CheckpointError(ResexpError):
    """A checkpoint that does not fit the run: another architecture, class count, or unreadable."""


class RunDirError(ResexpError):
    """A run directory that already holds an earlier run, which a new run would overwrite."""


class DiskFullError(ResexpError):
    """A write that found no space left (or the quota used up): which file, on which file system."""

    def __init__(self, message: str, path):
        super().__init__(message)
        self.path = path  # the file that could not be written


def error_line(e: BaseException, limit: int | None = 300, name: bool = True) -> str:
    """Any exception as one line, the one way resexp shows one: `Type: message` (`name=False`: the
    message alone). A ResexpError's message is written for users and kept whole, its lines joined by
    "; "; another's is its first line (the rest is a report or a traceback). Cut to `limit` characters
    (a CUDA out-of-memory message is long)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = "; ".join(lines) if isinstance(e, ResexpError) else (lines[0] if lines else "")
    line = f"{type(e).__name__}: {text}" if name and text else text if text else type(e).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."
