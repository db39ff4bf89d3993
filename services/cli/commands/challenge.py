"""The hosted challenge: `pirm challenge` (its definition as the caller sees it), `pirm select`
(a team's final choice), and the organisers' `pirm rerun` and `pirm publish`."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from services.cli.flags import add_scorer_flags, add_track, scorer_client
from services.cli.output import jobs_table, leaderboard_table, print_json, say, say_aside
from services.client import challenge_summary, job_summary, leaderboard_rows


def register(commands: Any) -> None:
    challenge = commands.add_parser(
        "challenge", help="the challenge's tracks and phases: open or closed, quota left today")
    add_scorer_flags(challenge)
    challenge.set_defaults(run=challenge_command)

    select = commands.add_parser(
        "select", help="make one of your succeeded jobs the one standing for you in its phase")
    select.add_argument("job_id")
    add_scorer_flags(select)
    select.set_defaults(run=select_command)

    rerun = commands.add_parser(
        "rerun", help="organisers: evaluate a phase's standing submissions again, as new jobs")
    add_track(rerun)
    rerun.add_argument("--phase", required=True, help="the phase whose submissions to rerun")
    rerun.add_argument("--all", action="store_true", dest="every",
                       help="every succeeded submission, not only each team's standing one")
    rerun.add_argument("--into", default="", metavar="PHASE",
                       help="evaluate them in this phase (its dataset; default: the same)")
    rerun.add_argument("--wait", action="store_true", help="show progress until all are done")
    add_scorer_flags(rerun)
    rerun.set_defaults(run=rerun_command)

    publish = commands.add_parser(
        "publish", help="organisers: make a hidden leaderboard public")
    add_track(publish)
    publish.add_argument("--phase", required=True)
    add_scorer_flags(publish)
    publish.set_defaults(run=publish_command)


def challenge_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        summary = challenge_summary(client.challenge())
    print_json(summary) if args.json else say(challenge_text(summary))
    return 0


def challenge_text(summary: dict[str, Any]) -> str:
    if not summary["defined"]:
        return ("This scorer runs without a challenge definition (a tool): submit with "
                "--dataset, no quotas, no phases.")
    lines = [summary["title"] or "Challenge"]
    for track in summary["tracks"]:
        baselines = ", ".join(track["baselines"]) or "none"
        lines += ["", f"Track {track['track']} (baseline rows: {baselines}; PSNR_base "
                      f"{track['psnr_base']:g} dB, SSIM_base {track['ssim_base']:g})",
                  f"  {'phase':14}  {'scoring':10}  {'state':8}  {'opens (UTC)':16}  "
                  f"{'closes (UTC)':16}  {'quota':10}  {'results':9}  {'leaderboard':11}  entry"]
        for p in track["phases"]:
            quota = "no limit"
            if p["submissions_per_day"] is not None:
                quota = f"{p['submissions_per_day']}/day"
                if p["submissions_left_today"] is not None:
                    quota += f", {p['submissions_left_today']} left"
            lines.append(
                f"  {p['name']:14}  {p['scoring']:10}  {p['state']:8}  {_when(p['opens']):16}  "
                f"{_when(p['closes']):16}  {quota:10}  {p['results']:9}  "
                f"{'public' if p['leaderboard_public'] else 'hidden':11}  {p['entry']}")
    return "\n".join(lines)


def _when(stamp: str | None) -> str:
    if stamp is None:
        return "-"
    return f"{dt.datetime.fromisoformat(stamp.replace('Z', '+00:00')):%Y-%m-%d %H:%M}"


def select_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        summary = job_summary(client.select(args.job_id))
    if args.json:
        print_json(summary)
    else:
        say(f"job {summary['job_id']} now stands for {summary['team'] or 'your team'} in track "
            f"{summary['track']}'s {summary['phase_name'] or summary['phase']} phase")
    return 0


def rerun_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        jobs = client.rerun(args.track, args.phase, every=args.every, into_phase_name=args.into)
        if args.wait and jobs:
            from services.cli.progress import follow_jobs

            summaries = follow_jobs(client, [job.job_id for job in jobs])
        else:
            summaries = [job_summary(job) for job in jobs]
    if args.json:
        print_json(summaries)
        return 0
    into = args.into or args.phase
    if not summaries:
        say_aside(f"track {args.track}'s {args.phase} phase has no succeeded submission to rerun")
        return 0
    say(f"{len(summaries)} job(s) evaluating track {args.track}'s {args.phase} submissions again "
        f"in its {into} phase (each linked to its original: rerun_of)")
    say(jobs_table(summaries))
    return 1 if any(s["state"] == "FAILED" for s in summaries) else 0


def publish_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        board = client.publish(args.track, args.phase)
    rows = leaderboard_rows(board)
    if args.json:
        print_json(rows)
    else:
        say(f"track {args.track}'s {args.phase} leaderboard is public")
        say(leaderboard_table(args.track, "a", rows))
    return 0
