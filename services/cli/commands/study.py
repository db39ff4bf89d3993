"""`pirm study create|status|close|report`: the final phase's user study, for organisers."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from services.cli.flags import add_scorer_flags, add_track, positive_int, scorer_client
from services.cli.output import print_json
from services.core.wire import TRACKS

DEFAULT_PAGE = "http://127.0.0.1:8080"  # `pirm up`'s rating page


def register(commands: Any) -> None:
    study = commands.add_parser("study", help="the final phase's user study (organisers)")
    actions = study.add_subparsers(required=True, metavar="ACTION")

    create = actions.add_parser(
        "create", help="a study over a final phase's finalists (each team's standing "
                       "submission and the baselines); prints the raters' links")
    create.add_argument("study_id", help="its name: a-z, 0-9, - and _")
    add_track(create)
    create.add_argument("--phase", default="final", help="the final phase's name")
    create.add_argument("--raters", type=positive_int, required=True,
                        help="rater links to make")
    create.add_argument("--ratings-per-pair", type=positive_int, default=3,
                        help="ratings of each (method, image) pair")
    create.add_argument("--images", type=int, default=0,
                        help="rate a seeded random subset of this many images (0: all)")
    create.add_argument("--seed", type=int, default=0)
    create.add_argument("--controls", type=int, default=2,
                        help="hidden control tasks per rater (input as its own result, a "
                             "degraded result)")
    create.add_argument("--repeats", type=int, default=1, help="repeated tasks per rater")
    create.add_argument("--max-control-failures", type=int, default=0)
    create.add_argument("--max-repeat-gap", type=int, default=1,
                        help="levels a repeat may differ from the first answer")
    create.add_argument("--max-inconsistent-repeats", type=int, default=0)
    create.add_argument("--min-median-seconds", type=float, default=1.5,
                        help="raters answering faster than this (median) are excluded")
    add_page_flag(create)
    add_scorer_flags(create)
    create.set_defaults(run=create_command)

    status = actions.add_parser("status", help="progress, MOS so far, raters and exclusions")
    status.add_argument("study_id")
    status.add_argument("--links", action="store_true", help="print each rater's link")
    add_page_flag(status)
    add_scorer_flags(status)
    status.set_defaults(run=status_command)

    close = actions.add_parser(
        "close", help="no more ratings; each finalist's job gets its MOS and is rescored")
    close.add_argument("study_id")
    add_page_flag(close)
    add_scorer_flags(close)
    close.set_defaults(run=close_command)

    report = actions.add_parser("report", help="write the study's HTML report")
    report.add_argument("study_id")
    report.add_argument("--out", type=Path, help="folder (default: study-STUDY_ID)")
    add_scorer_flags(report)
    report.set_defaults(run=report_command)


def add_page_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page", default=DEFAULT_PAGE,
                        help="the rating page's public address, for the raters' links")


def create_command(args: argparse.Namespace) -> int:
    from pirm.v1 import scorer_pb2

    rule = scorer_pb2.StudyRule(
        max_control_failures=args.max_control_failures, max_repeat_gap=args.max_repeat_gap,
        max_inconsistent_repeats=args.max_inconsistent_repeats,
        min_median_seconds=args.min_median_seconds)
    with scorer_client(args) as client:
        study = client.create_study(
            args.study_id, args.track, args.phase, args.raters, args.ratings_per_pair,
            args.images, args.seed, args.controls, args.repeats, rule)
    show(study, args, links=True)
    return 0


def status_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        study = client.study(args.study_id)
    show(study, args, links=args.links)
    return 0


def close_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        study = client.close_study(args.study_id)
    show(study, args, links=False)
    if not args.json:
        print("closed: each finalist's job has its MOS; the final leaderboard ranks with it "
              f"(pirm leaderboard --track {TRACKS[study.track].value} --phase final)")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from services.report.study import write_study_report

    with scorer_client(args) as client:
        report = client.study_report(args.study_id)
    files = write_study_report(report, args.out or Path(f"study-{args.study_id}"))
    if args.json:
        print_json({"html": str(files[0]), "images": [str(f) for f in files[1:]]})
    else:
        print(f"report written to {files[0]} ({len(files) - 1} images beside it)")
    return 0


def study_summary(study: Any, page: str, links: bool) -> dict[str, Any]:
    return {
        "study_id": study.study_id, "state": study.state, "phase": study.phase_name,
        "images": list(study.images),
        "methods": [{"team": m.team, "job_id": m.job_id, "baseline": m.baseline,
                     "mos": m.mos if m.HasField("mos") else None,
                     "interval": [_finite(m.mos_low), _finite(m.mos_high)],
                     "ratings": m.ratings, "ties": [study.methods[t].team for t in m.ties]}
                    for m in study.methods],
        "raters": [{"rater": r.rater, "done": r.done, "total": r.total,
                    "excluded": r.excluded, "reasons": list(r.reasons),
                    "worker_id": r.worker_id,
                    **({"link": f"{page.rstrip('/')}/rate/{r.token}",
                        "completion_code": r.completion_code} if links else {})}
                   for r in study.raters],
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def show(study: Any, args: argparse.Namespace, links: bool) -> None:
    summary = study_summary(study, args.page, links)
    if args.json:
        print_json(summary)
        return
    done = sum(r["done"] for r in summary["raters"])
    total = sum(r["total"] for r in summary["raters"])
    print(f"study {study.study_id} ({study.state.lower()}): phase {study.phase_name}, "
          f"{len(study.methods)} methods x {len(study.images)} images, {done}/{total} "
          "tasks answered")
    for m in summary["methods"]:
        mos = "  –  " if m["mos"] is None else f"{m['mos']:.3f}"
        low, high = m["interval"]
        interval = "" if low is None else f" [{low:.3f}, {high:.3f}]"
        ties = f"  tied with {', '.join(m['ties'])}" if m["ties"] else ""
        print(f"  {m['team']:<20} MOS {mos}{interval}  {m['ratings']} ratings{ties}")
    excluded = [r for r in summary["raters"] if r["excluded"]]
    print(f"raters: {len(summary['raters'])}, excluded {len(excluded)}")
    for r in excluded:
        print(f"  rater {r['rater']}: {'; '.join(r['reasons'])}")
    if links:
        for r in summary["raters"]:
            print(f"  {r['link']}  (completion code {r['completion_code']})")
