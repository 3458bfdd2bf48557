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

def error_line(e: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, cut to `limit` characters (a CUDA OOM message is long)."""
    text = str(e).strip().splitlines()
    line = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
