"""`pirm report`: an HTML report (leaderboard, figures, crops) of a job or of a track's board,
from what the scorer returns."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from services.cli.flags import add_scorer_flags, scorer_client
from services.cli.output import print_json
from services.core.track import Track


def register(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="write an HTML report (leaderboard, figures, crops) of a job or a track")
    subject = report.add_mutually_exclusive_group(required=True)
    subject.add_argument("job_id", nargs="?", help="the job to report on")
    subject.add_argument("--track", choices=["A", "B"], type=str.upper,
                         help="report on a track's leaderboard instead")
    report.add_argument("--phase", default="validation",
                        help="with --track: which phase's board (its name)")
    report.add_argument("--by", choices=["a", "b", "c"], default="a", help="ranking score")
    report.add_argument("--out", type=Path,
                        help="folder for report.html and its PNG figures (default: "
                             "report-JOB_ID or report-track-A)")
    add_scorer_flags(report)
    report.set_defaults(run=report_command)


def report_command(args: argparse.Namespace) -> int:
    from services.report.gather import job_report, track_report
    from services.report.html import write_report

    with scorer_client(args) as client:
        if args.job_id:
            content = job_report(client, args.job_id, args.by)
        else:
            content = track_report(client, Track(args.track), args.phase, args.by)
    out = args.out or Path(f"report-{args.job_id}" if args.job_id else f"report-track-{args.track}")
    files = write_report(content, out)
    if args.json:
        print_json({"html": str(files[0]), "figures": [str(f) for f in files[1:]],
                    "track": content.track, "phase": content.phase,
                    "job_id": content.focus_job or None, "entries": len(content.rows),
                    "crops": [c.figures.image for c in content.crops],
                    "notes": content.notes})
    else:
        print(f"report written to {files[0]} ({len(files) - 1} figures beside it)")
    return 0
