"""A team's jobs on the scorer: `pirm submit`, `status`, `cancel`, `set-mos`, `jobs`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from services.cli.flags import add_scorer_flags, add_track, scorer_client
from services.cli.output import jobs_table, print_job, print_json
from services.client import job_summary
from services.common.config import env_default
from services.core.track import Phase


def register(commands: Any) -> None:
    submit = commands.add_parser("submit", help="submit a model for evaluation")
    add_track(submit)
    submit.add_argument("--model", type=Path, required=True, help="the frozen graph (.pb)")
    submit.add_argument("--data", type=Path, required=True, help="dataset folder")
    submit.add_argument("--phase", choices=[p.value for p in Phase], default="validation")
    submit.add_argument("--mos", type=float, help="final phase: the model's MOS")
    submit.add_argument("--team", default=env_default("PIRM_TEAM", ""))
    submit.add_argument("--request-id", default="", help="idempotency key")
    submit.add_argument("--wait", action="store_true", help="show progress until done")
    add_scorer_flags(submit)
    submit.set_defaults(run=submit_command)

    status = commands.add_parser("status", help="one job")
    status.add_argument("job_id")
    add_scorer_flags(status)
    status.set_defaults(run=status_command)

    cancel = commands.add_parser("cancel", help="stop a queued or running job")
    cancel.add_argument("job_id")
    add_scorer_flags(cancel)
    cancel.set_defaults(run=cancel_command)

    set_mos = commands.add_parser("set-mos", help="give a finished final-phase job its MOS")
    set_mos.add_argument("job_id")
    set_mos.add_argument("--mos", type=float, required=True, help="the user study's MOS")
    add_scorer_flags(set_mos)
    set_mos.set_defaults(run=set_mos_command)

    jobs = commands.add_parser("jobs", help="all jobs")
    jobs.add_argument("--team", default="")
    add_scorer_flags(jobs)
    jobs.set_defaults(run=jobs_command)


def submit_command(args: argparse.Namespace) -> int:
    if not args.model.is_file():
        print(f"pirm: model file {args.model} does not exist", file=sys.stderr)
        return 2
    with scorer_client(args) as client:
        job = client.submit(
            args.track, args.model, args.data, phase=args.phase, mos=args.mos, team=args.team,
            request_id=args.request_id,
        )
        if args.wait:
            from services.cli.progress import follow_jobs

            summary = follow_jobs(client, [job.job_id])[0]
        else:
            summary = job_summary(job)
    show_job(args, summary)
    return 1 if summary["state"] == "FAILED" else 0


def status_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        show_job(args, job_summary(client.get(args.job_id)))
    return 0


def cancel_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        show_job(args, job_summary(client.cancel(args.job_id)))
    return 0


def set_mos_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        show_job(args, job_summary(client.set_mos(args.job_id, args.mos)))
    return 0


def jobs_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        summaries = [job_summary(job) for job in client.jobs(team=args.team)]
    print_json(summaries) if args.json else print(jobs_table(summaries))
    return 0


def show_job(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    print_json(summary) if args.json else print_job(summary)
