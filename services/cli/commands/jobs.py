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
    submit.add_argument("model_file", nargs="?", type=Path, metavar="MODEL",
                        help="the frozen graph (.pb)")
    submit.add_argument("--model", type=Path, help="the frozen graph (.pb), if not given above")
    submit.add_argument(
        "--phase", default="validation",
        help="the phase to enter (pirm challenge lists them); its dataset is used. Without a "
             "challenge: validation or final")
    submit.add_argument(
        "--dataset", "--data", dest="data", type=Path,
        help="organisers and tools: evaluate on this dataset folder instead of the phase's "
             "(required when the scorer runs without a challenge)")
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
    model = args.model_file or args.model
    if model is None:
        print("pirm: name the model file: pirm submit --track B --phase validation model.pb",
              file=sys.stderr)
        return 2
    if not model.is_file():
        print(f"pirm: model file {model} does not exist", file=sys.stderr)
        return 2
    # The phase's scoring comes from the challenge; without one, the phase names it.
    scoring = args.phase if args.phase in set(Phase) else Phase.VALIDATION
    with scorer_client(args) as client:
        job = client.submit(
            args.track, model, args.data, phase=scoring, mos=args.mos, team=args.team,
            request_id=args.request_id, phase_name=args.phase,
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
