"""`pirm batch` (many models in shards: a Kubernetes Indexed Job, or `--local N` processes) and
`pirm shard` (one shard of a batch: what each of those pods or processes runs)."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from services.cli.flags import (
    IN_CLUSTER,
    INFERENCE,
    METRICS,
    SCORER,
    add_connection_flags,
    add_track,
    positive_int,
    scorer_client,
    security,
)
from services.cli.output import leaderboard_table, print_json, say, say_aside
from services.client import ScorerClient, job_summary, leaderboard_rows
from services.common.auth import Role
from services.common.config import env_default
from services.common.logs import setup_logging
from services.core.channel import ChannelSecurity
from services.core.errors import PirmError
from services.core.track import Track


def register(commands: Any) -> None:
    batch = commands.add_parser(
        "batch", help="evaluate models in shards as a Kubernetes Indexed Job, and follow it")
    add_track(batch)
    batch.add_argument("--models", required=True,
                       help="a folder of .pb files or a comma-separated list, on the data volume")
    batch.add_argument("--data", required=True, help="the dataset folder on the data volume")
    batch.add_argument("--shards", type=positive_int, default=4,
                       help="pods that evaluate in parallel")
    batch.add_argument("--namespace", default="pirm-cpu",
                       help="where the cluster runs (pirm-cpu or pirm-gpu with deploy/k8s)")
    batch.add_argument("--image", default="pirm-eval:0.1.0", help="the shards' image")
    batch.add_argument("--data-claim", default="pirm-data",
                       help="PersistentVolumeClaim of the data volume, mounted read-only")
    batch.add_argument("--scorer",
                       help=f"scorer host:port as the Job's pods reach it (default "
                            f"{IN_CLUSTER['scorer']}); with --local, a running scorer (default: "
                            f"${SCORER} or 127.0.0.1:50053 if serving, else the services are "
                            "started for the run)")
    batch.add_argument("--kubeconfig", help="cluster credentials (default: as kubectl)")
    batch.add_argument("--dry-run", action="store_true",
                       help="print the Job's manifest instead of creating it")
    batch.add_argument("--local", type=positive_int, metavar="N",
                       help="no Kubernetes: run the shards as N local processes (paths are local)")
    batch.add_argument("--inference", default=env_default(INFERENCE, "127.0.0.1:50051"),
                       help=f"with --local and a running scorer: its inference endpoints (env "
                            f"{INFERENCE})")
    batch.add_argument("--metrics", default=env_default(METRICS, "127.0.0.1:50052"),
                       help=f"with --local and a running scorer: its metrics endpoints (env "
                            f"{METRICS})")
    add_connection_flags(batch)
    batch.add_argument("--json", action="store_true",
                       help="print the jobs and the leaderboard as JSON (progress on stderr)")
    batch.set_defaults(run=batch_command)

    shard = commands.add_parser(
        "shard", help="evaluate shard i of a batch's (models x images) and report it (what "
                      "each pod of `pirm batch` runs)")
    shard.add_argument("--index", type=int, required=True,
                       help="this shard, 0..shards-1 (a Job pod's JOB_COMPLETION_INDEX)")
    shard.add_argument("--shards", type=positive_int, required=True)
    add_track(shard)
    shard.add_argument("--models", required=True,
                       help="a folder of .pb files or a comma-separated list")
    shard.add_argument("--data", type=Path, required=True,
                       help="the dataset folder, at the same path as the scorer sees it")
    shard.add_argument("--scorer", default=env_default(SCORER, "127.0.0.1:50053"),
                       help=f"scorer host:port (env {SCORER})")
    shard.add_argument("--inference", default=env_default(INFERENCE, IN_CLUSTER["inference"]),
                       help=f"inference endpoints, as the scorer's (env {INFERENCE})")
    shard.add_argument("--metrics", default=env_default(METRICS, IN_CLUSTER["metrics"]),
                       help=f"metrics endpoints, as the scorer's (env {METRICS})")
    shard.add_argument("--batch-id", default="",
                       help="the batch (every shard of it gives the same); default: derived from "
                            "the track, the dataset and the models")
    shard.add_argument("--team", default="", help="default: each model's file name without .pb")
    add_connection_flags(shard)
    shard.add_argument("--json", action="store_true")
    shard.set_defaults(run=shard_command)


def batch_command(args: argparse.Namespace) -> int:
    from services.batch.job import batch_job_name

    show = say_aside if args.json else say
    if args.local:
        return _batch_local(args, batch_job_name(args.track), show)
    return _batch_on_kubernetes(args, show)


def _batch_on_kubernetes(args: argparse.Namespace, show: Callable[[str], None]) -> int:
    """Creates the Indexed Job, follows its shards, then (if the scorer is reachable from here)
    its jobs until the scorer has timed and scored them."""
    from kubernetes.client import ApiException
    from kubernetes.config import ConfigException

    from services.batch import api
    from services.batch.job import BatchSpec, batch_job_name, build_job, manifest_yaml
    from services.common.cluster import is_serving

    spec = BatchSpec(
        name=batch_job_name(args.track), track=args.track, models=args.models, data=args.data,
        shards=args.shards, namespace=args.namespace, image=args.image,
        data_claim=args.data_claim, scorer=args.scorer or IN_CLUSTER["scorer"],
    )
    job = build_job(spec)
    if args.dry_run:
        print(manifest_yaml(job), end="")
        return 0
    outcome = None
    try:
        kubernetes = api.connect(args.kubeconfig)
        api.create_job(kubernetes, spec.namespace, job)
        show(f"created job {spec.namespace}/{spec.name}: {spec.shards} shards")
        for progress in api.follow_job(kubernetes, spec.namespace, spec.name):
            show(progress.summary())
            outcome = progress.outcome
    except ConfigException as error:
        print(f"pirm: no Kubernetes cluster configured: {error}", file=sys.stderr)
        return 2
    except ApiException as error:
        print(f"pirm: Kubernetes API: {api.error_message(error)}", file=sys.stderr)
        return 2
    # After failed shards the jobs still wait for images: only a complete batch is awaited.
    if outcome != "Complete" or not is_serving(spec.scorer):
        show(f"job {spec.name}: {outcome}. Results are on the scorer's leaderboard: "
             f"pirm leaderboard --track {spec.track}")
        if args.json:
            print_json({"batch_id": spec.name, "outcome": outcome, "jobs": None,
                        "leaderboard": None})
        return 0 if outcome == "Complete" else 1
    show(f"job {spec.name}: {outcome}. The scorer times and scores each model:")
    return _print_batch_results(args, spec.scorer, spec.track, spec.name)


def _batch_local(args: argparse.Namespace, batch_id: str, show: Callable[[str], None]) -> int:
    from services.batch.local import LocalBatch, batch_services, run_shards

    batch = LocalBatch(batch_id=batch_id, track=args.track, models=args.models, data=args.data,
                       processes=args.local, scorer=args.scorer, inference=args.inference,
                       metrics=args.metrics, token=security(args, Role.INTERNAL).token)
    try:
        with batch_services(batch, show) as targets:
            show(f"batch {batch_id}: {batch.processes} local shards, scorer {targets.scorer}")
            with batch_bars(targets.scorer, batch_id, security(args)):
                shards_ok = run_shards(batch, targets, show)
            if not shards_ok:
                show(f"The jobs wait for the failed shards' images: run those again with "
                     f"pirm shard ... --batch-id {batch_id}")
                return 1
            return _print_batch_results(args, targets.scorer, args.track, batch_id)
    except PirmError as error:
        print(f"pirm: {error}", file=sys.stderr)
        return 2


def _print_batch_results(args: argparse.Namespace, scorer: str, track: str, batch_id: str
                         ) -> int:
    """Follows the batch's jobs until each has finished, then prints them and the track's
    leaderboard; 1 if a job did not succeed."""
    from services.batch.shard import batch_job_ids
    from services.cli.progress import follow_jobs, print_summary_table

    with scorer_client(args, scorer) as client:
        summaries = follow_jobs(client, batch_job_ids(client, batch_id))
        rows = leaderboard_rows(client.leaderboard(track, by="a"))
    if args.json:
        print_json({"batch_id": batch_id, "jobs": summaries, "leaderboard": rows})
    else:
        print_summary_table(summaries, title=f"Batch {batch_id}")
        print(leaderboard_table(track, "a", rows))
    return 0 if summaries and all(s["state"] == "SUCCEEDED" for s in summaries) else 1


@contextmanager
def batch_bars(scorer: str, batch_id: str, channel: ChannelSecurity) -> Iterator[None]:
    """Bars of a batch's jobs while its shards report their images (polled every second)."""
    from services.cli.progress import JobBars

    stop = threading.Event()

    def poll() -> None:
        with ScorerClient(scorer, security=channel) as client, JobBars() as bars:
            try:
                while not stop.wait(1.0):
                    for job in client.jobs():
                        if job.request_id.startswith(f"{batch_id}/"):
                            bars.update(job_summary(job))
            except grpc.RpcError:
                return  # only the display stops; the shards report what they measure

    thread = threading.Thread(target=poll, name="batch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def shard_command(args: argparse.Namespace) -> int:
    from services.batch.shard import ShardSpec, run_shard

    setup_logging()
    spec = ShardSpec(index=args.index, shards=args.shards, track=Track(args.track),
                     models=args.models, data=args.data, scorer=args.scorer,
                     inference=args.inference, metrics=args.metrics, batch_id=args.batch_id,
                     team=args.team, security=security(args, Role.INTERNAL))
    try:
        report = run_shard(spec)
    except PirmError as error:
        print(f"pirm shard: {error}", file=sys.stderr)
        return 2
    if args.json:
        print_json({"index": spec.index, "shards": spec.shards, "pairs": report.pairs,
                    "reported": report.reported, "skipped_jobs": report.skipped_jobs,
                    "failed_jobs": report.failed_jobs})
        return 0
    notes = ""
    if report.skipped_jobs:
        notes += f"; jobs no longer waiting: {', '.join(report.skipped_jobs)}"
    if report.failed_jobs:
        notes += ("; jobs failed (their model failed on an image): "
                  f"{', '.join(report.failed_jobs)}")
    print(f"shard {spec.index}/{spec.shards}: {report.reported} of {report.pairs} (model, image) "
          f"pairs measured and reported{notes}")
    return 0
