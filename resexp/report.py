"""`python -m resexp.report DIR [DIR ...] [--out DIR]`: the sweep report (resexp/reports/sweep.py)."""

from resexp.cli import run_command
from resexp.errors import ResexpError
from resexp.reports.sweep import main

if __name__ == "__main__":
    run_command(main, errors=(ResexpError, OSError))
