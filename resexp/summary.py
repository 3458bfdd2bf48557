"""`python -m resexp.summary [overrides]`: a configured model's layer table (resexp/reports/model_summary.py)."""

from resexp.cli import run_command
from resexp.reports.model_summary import USER_ERRORS, main, one_line

__all__ = ["main"]

if __name__ == "__main__":
    run_command(main, errors=USER_ERRORS, describe=one_line)
