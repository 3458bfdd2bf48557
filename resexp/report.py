"""`python -m resexp.report DIR [DIR ...] [out=DIR]` (also `--out DIR`): the sweep report
(resexp/reports/sweep.py) for a sweep directory, run directories, or any folder above them.

Writes sweep_summary.csv, sweep_summary.md and sweep_val_acc.png into the one directory given, or
into `out`, and prints the markdown.
"""

from __future__ import annotations

from pathlib import Path

from resexp.cli import Command, Option, run_command
from resexp.errors import ResexpError

COMMAND = Command("report", "summarise a sweep directory or a set of run directories: sweep_summary.csv/.md "
                            "and a plot of validation accuracy per epoch", {
    "dirs": Option(None, "a sweep directory, run directories, or any folder above them", required=True),
    "out": Option(None, "where to write the report (default: the directory given, when there is one)"),
}, positional="dirs")


def main(argv: list[str]) -> int:
    from resexp.reports.sweep import ReportError, build_report, collect_jobs

    args = COMMAND.parse(argv)[0]
    dirs = [Path(d).expanduser() for d in args["dirs"]]
    jobs = collect_jobs(dirs)
    if args["out"] is None and len(dirs) > 1:
        raise ReportError("several directories given: say where the report goes with out=DIR")
    out = Path(str(args["out"])).expanduser() if args["out"] is not None else dirs[0]
    paths = build_report(jobs, out, root=dirs[0] if len(dirs) == 1 else out)
    print(paths[1].read_text(), end="")
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    run_command(main, errors=(ResexpError, OSError))
