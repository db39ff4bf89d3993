"""`pirm`: run the cluster, submit models, read results, and compute the challenge's figures."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from services.common.auth import Role
from services.common.cluster import local_token
from services.common.config import add_channel_flags, env_default
from services.common.logs import setup_logging
from services.core.channel import ChannelSecurity
from services.core.errors import InvalidArgument
from services.core.track import Phase, Track
from services.scorer.scoring import ScoreInputs, compute_scores

if TYPE_CHECKING:
    from services.client import ScorerClient

SCORER = "PIRM_SCORER_TARGET"
INFERENCE = "PIRM_INFERENCE_TARGET"
METRICS = "PIRM_METRICS_TARGET"
# The Services of deploy/k8s, as batch pods reach them (dns:///: every pod of a headless one).
IN_CLUSTER = {"scorer": "scorer:50053", "inference": "dns:///inference:50051",
              "metrics": "dns:///metrics:50052"}


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.run(args)
    except grpc.RpcError as error:
        print(f"pirm: {error.code().name}: {error.details()}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pirm", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start the three services locally (foreground)")
    up.add_argument("--insecure-dev", action="store_true",
                    help="no authentication (the services listen on loopback anyway); default: "
                         "tokens from $PIRM_TOKENS_FILE, else made in $PIRM_STATE_DIR/tokens")
    up.set_defaults(run=cmd_up)

    token = commands.add_parser(
        "token", help="make a new bearer token (with --role and --name: a tokens-file line)")
    token.add_argument("--role", choices=[r.value for r in Role])
    token.add_argument("--name", help="the team's (or organiser's) name")
    token.set_defaults(run=cmd_token)

    serve = commands.add_parser("serve", help="run one service (what a container runs)")
    serve.add_argument("service", choices=["inference", "metrics", "scorer"])
    serve.add_argument("args", nargs=argparse.REMAINDER, help="the service's own flags")
    serve.set_defaults(run=cmd_serve)

    submit = commands.add_parser("submit", help="submit a model for evaluation")
    _track(submit)
    submit.add_argument("--model", type=Path, required=True, help="the frozen graph (.pb)")
    submit.add_argument("--data", type=Path, required=True, help="dataset folder")
    submit.add_argument("--phase", choices=[p.value for p in Phase], default="validation")
    submit.add_argument("--mos", type=float, help="final phase: the model's MOS")
    submit.add_argument("--team", default=env_default("PIRM_TEAM", ""))
    submit.add_argument("--request-id", default="", help="idempotency key")
    submit.add_argument("--wait", action="store_true", help="show progress until done")
    _scorer_and_json(submit)
    submit.set_defaults(run=cmd_submit)

    status = commands.add_parser("status", help="one job")
    status.add_argument("job_id")
    _scorer_and_json(status)
    status.set_defaults(run=cmd_status)

    cancel = commands.add_parser("cancel", help="stop a queued or running job")
    cancel.add_argument("job_id")
    _scorer_and_json(cancel)
    cancel.set_defaults(run=cmd_cancel)

    set_mos = commands.add_parser("set-mos", help="give a finished final-phase job its MOS")
    set_mos.add_argument("job_id")
    set_mos.add_argument("--mos", type=float, required=True, help="the user study's MOS")
    _scorer_and_json(set_mos)
    set_mos.set_defaults(run=cmd_set_mos)

    jobs = commands.add_parser("jobs", help="all jobs")
    jobs.add_argument("--team", default="")
    _scorer_and_json(jobs)
    jobs.set_defaults(run=cmd_jobs)

    board = commands.add_parser("leaderboard", help="a track's leaderboard")
    _track(board)
    board.add_argument("--by", choices=["a", "b", "c"], default="a")
    board.add_argument("--phase", choices=[p.value for p in Phase], default="validation")
    board.add_argument("--policy", choices=["best", "latest"], default="best",
                       help="which of a team's results stands for it")
    _scorer_and_json(board)
    board.set_defaults(run=cmd_leaderboard)

    score = commands.add_parser("score", help="the scoring formula alone (SPEC section 3)")
    _track(score)
    score.add_argument("--psnr", type=float, required=True)
    quality = score.add_mutually_exclusive_group(required=True)
    quality.add_argument("--msssim", type=float, help="validation phase")
    quality.add_argument("--mos", type=float, help="final phase")
    score.add_argument("--mos-ref", type=float)
    score.add_argument("--kappa", type=float, default=0.0719)
    score.add_argument("--runtime-ms", type=float, required=True)
    score.add_argument("--baseline-runtime-ms", type=float, required=True)
    score.add_argument("--json", action="store_true")
    score.set_defaults(run=cmd_score)

    metrics = commands.add_parser("metrics", help="a track's metrics of one (output, target)")
    _track(metrics)
    metrics.add_argument("output", type=Path, help=".npy float32 HxWx3 or an 8-bit image")
    metrics.add_argument("target", type=Path, help="an 8-bit image")
    metrics.add_argument("--json", action="store_true")
    metrics.set_defaults(run=cmd_metrics)

    bench = commands.add_parser("bench", help="time a model in-process as the service does")
    from services.cli.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(run=cmd_bench)

    inspect = commands.add_parser(
        "inspect", help="a frozen graph's ops, parameters, FLOPs, tensors and allowlist verdict "
                        "(--mobile: LiteRT conversion and runtime)")
    from services.cli.inspect_model import add_arguments as add_inspect_arguments

    add_inspect_arguments(inspect)
    inspect.set_defaults(run=cmd_inspect)

    batch = commands.add_parser(
        "batch", help="evaluate models in shards as a Kubernetes Indexed Job, and follow it")
    _track(batch)
    batch.add_argument("--models", required=True,
                       help="a folder of .pb files or a comma-separated list, on the data volume")
    batch.add_argument("--data", required=True, help="the dataset folder on the data volume")
    batch.add_argument("--shards", type=_positive_int, default=4,
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
    batch.add_argument("--local", type=_positive_int, metavar="N",
                       help="no Kubernetes: run the shards as N local processes (paths are local)")
    batch.add_argument("--inference", default=env_default(INFERENCE, "127.0.0.1:50051"),
                       help=f"with --local and a running scorer: its inference endpoints (env "
                            f"{INFERENCE})")
    batch.add_argument("--metrics", default=env_default(METRICS, "127.0.0.1:50052"),
                       help=f"with --local and a running scorer: its metrics endpoints (env "
                            f"{METRICS})")
    _connection_flags(batch)
    batch.add_argument("--json", action="store_true",
                       help="print the jobs and the leaderboard as JSON (progress on stderr)")
    batch.set_defaults(run=cmd_batch)

    shard = commands.add_parser(
        "shard", help="evaluate shard i of a batch's (models x images) and report it (what "
                      "each pod of `pirm batch` runs)")
    shard.add_argument("--index", type=int, required=True,
                       help="this shard, 0..shards-1 (a Job pod's JOB_COMPLETION_INDEX)")
    shard.add_argument("--shards", type=_positive_int, required=True)
    _track(shard)
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
    _connection_flags(shard)
    shard.add_argument("--json", action="store_true")
    shard.set_defaults(run=cmd_shard)

    add_report_command(commands)

    demo = commands.add_parser(
        "demo", help="start the cluster, evaluate the baselines of both tracks, print leaderboards"
    )
    demo.add_argument("--data", type=Path, help="challenge data folder (default: PIRM_DATA, "
                      "../shared/pirm2018, else generated samples)")
    demo.add_argument("--json", action="store_true",
                      help="print the jobs and both leaderboards as JSON (progress on stderr)")
    demo.set_defaults(run=cmd_demo)
    return parser


def _track(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--track", choices=["A", "B"], required=True, type=str.upper)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _scorer_and_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scorer", default=env_default(SCORER, "127.0.0.1:50053"),
                        help=f"scorer host:port (env {SCORER})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    _connection_flags(parser)


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token", default=env_default("PIRM_TOKEN", ""),
        help="bearer token (env PIRM_TOKEN; default: the organiser token of the local cluster "
             "that `pirm up` made in $PIRM_STATE_DIR/tokens, if any)")
    add_channel_flags(parser)


def _security(args: argparse.Namespace, role: Role = Role.ORGANISER) -> ChannelSecurity:
    """The token and TLS files of the command line; without --token, the local cluster's."""
    try:
        return ChannelSecurity.from_args(args, args.token or local_token(role))
    except InvalidArgument as error:
        raise SystemExit(f"pirm: {error}") from None


def _scorer_client(args: argparse.Namespace, target: str | None = None) -> Any:
    from services.client import ScorerClient

    return ScorerClient(target or args.scorer, security=_security(args))


def _say(text: str) -> None:
    print(text, flush=True)


def _say_aside(text: str) -> None:
    """Messages that must not mix with JSON on stdout."""
    print(text, file=sys.stderr, flush=True)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, allow_nan=False))


# -- commands -----------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from services.common.cluster import LocalCluster, StartFailed

    setup_logging()
    cluster = LocalCluster(insecure_dev=args.insecure_dev)
    print("Starting inference, metrics and scorer ...", file=sys.stderr, flush=True)
    try:
        cluster.start(say=_say_aside)  # stdout says only that the cluster is up, and where
    except StartFailed as error:
        raise SystemExit(f"pirm up: {error}") from None
    targets = ", ".join(f"{s} {cluster.target(s)} (/metrics on :{cluster.metrics_ports[s]})"
                        for s in ("inference", "metrics", "scorer"))
    print(f"cluster up: {targets} (Ctrl-C stops)", flush=True)
    print("authentication: off (--insecure-dev)" if args.insecure_dev else
          f"authentication: tokens in {cluster.tokens_file} (pirm commands here use its "
          "organiser token; teams get `team NAME TOKEN` lines)", flush=True)
    cluster.wait()
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from services.common.auth import new_token

    if bool(args.role) != bool(args.name):
        print("pirm: give --role and --name together, or neither", file=sys.stderr)
        return 2
    print(f"{args.role} {args.name} {new_token()}" if args.role else new_token())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"services.{args.service}.server")
    module.main(args.args)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from services.client import job_summary

    if not args.model.is_file():
        print(f"pirm: model file {args.model} does not exist", file=sys.stderr)
        return 2
    with _scorer_client(args) as client:
        job = client.submit(
            args.track, args.model, args.data, phase=args.phase, mos=args.mos, team=args.team,
            request_id=args.request_id,
        )
        summary = follow_jobs(client, [job.job_id])[0] if args.wait else job_summary(job)
    if args.json:
        _print_json(summary)
    else:
        _print_job(summary)
    return 1 if summary["state"] == "FAILED" else 0


def cmd_status(args: argparse.Namespace) -> int:
    from services.client import job_summary

    with _scorer_client(args) as client:
        summary = job_summary(client.get(args.job_id))
    _print_json(summary) if args.json else _print_job(summary)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from services.client import job_summary

    with _scorer_client(args) as client:
        summary = job_summary(client.cancel(args.job_id))
    _print_json(summary) if args.json else _print_job(summary)
    return 0


def cmd_set_mos(args: argparse.Namespace) -> int:
    from services.client import job_summary

    with _scorer_client(args) as client:
        summary = job_summary(client.set_mos(args.job_id, args.mos))
    _print_json(summary) if args.json else _print_job(summary)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from services.client import job_summary

    with _scorer_client(args) as client:
        summaries = [job_summary(job) for job in client.jobs(team=args.team)]
    if args.json:
        _print_json(summaries)
        return 0
    print(f"{'job':12}  {'track':5}  {'state':9}  {'team':16}  {'model':24}  {'PSNR':>7}  "
          f"{'MS-SSIM':>7}  {'ms':>8}")
    for s in summaries:
        print(f"{s['job_id']:12}  {s['track']:5}  {s['state']:9}  {s['team'][:16]:16}  "
              f"{s['model_name'][:24]:24}  {_fmt(s.get('psnr'), 7, 3)}  "
              f"{_fmt(s.get('msssim'), 7, 4)}  {_fmt(s.get('runtime_ms'), 8, 1)}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from services.client import leaderboard_rows

    with _scorer_client(args) as client:
        rows = leaderboard_rows(client.leaderboard(args.track, by=args.by, phase=args.phase,
                                                   policy=args.policy))
    if args.json:
        _print_json(rows)
    else:
        print(leaderboard_table(args.track, args.by, rows))
    return 0


def leaderboard_table(track: str, by: str, rows: list[dict[str, Any]]) -> str:
    title = f"Track {track} leaderboard, ranked by score {by.upper()}"
    # The challenge's tables: fidelity, perception, runtime on CPU or GPU, RAM, three scores.
    header = (f"{'#':>2}  {'team':20}  {'PSNR':>7}  {'MS-SSIM':>7}  {'MOS':>5}  {'CPU ms':>8}  "
              f"{'GPU ms':>8}  {'RAM MB':>7}  {'base ms':>8}  {'score A':>8}  {'score B':>8}  "
              f"{'score C':>8}")
    lines = [title, header, "-" * len(header)]
    for r in rows:
        on_gpu = r.get("device", "").upper().startswith("GPU")
        lines.append(
            f"{r['rank']:>2}  {r['team'][:20]:20}  {_fmt(r['psnr'], 7, 3)}  "
            f"{_fmt(r['msssim'], 7, 4)}  {_fmt(r['mos'], 5, 2)}  "
            f"{_fmt(None if on_gpu else r['runtime_ms'], 8, 1)}  "
            f"{_fmt(r['runtime_ms'] if on_gpu else None, 8, 1)}  "
            f"{_fmt(r.get('peak_memory_mb') or None, 7, 0)}  "
            f"{_fmt(r['baseline_runtime_ms'], 8, 1)}  {_fmt(r['score_a'], 8, 2)}  "
            f"{_fmt(r['score_b'], 8, 2)}  {_fmt(r['score_c'], 8, 2)}"
        )
    flagged = [r for r in rows if r.get("timing_flag")]
    for r in flagged:
        lines[3 + rows.index(r)] += "  (!)"
    if flagged:
        lines.append("(!) timing not trusted: the model appears to recognise the timing input "
                     "(pirm status JOB --json shows why)")
    if not rows:
        lines.append("(no finished jobs)")
    return "\n".join(lines)


def cmd_score(args: argparse.Namespace) -> int:
    phase = Phase.FINAL if args.mos is not None else Phase.VALIDATION
    inputs = ScoreInputs(
        track=Track(args.track), phase=phase, psnr=args.psnr,
        msssim=args.msssim if args.msssim is not None else float("nan"),
        runtime_ms=args.runtime_ms, baseline_runtime_ms=args.baseline_runtime_ms,
        mos=args.mos, kappa=args.kappa, mos_ref=args.mos_ref,
    )
    scores = compute_scores(inputs)
    result = {"track": args.track, "phase": phase.value, "score_a": scores.score_a,
              "score_b": scores.score_b, "score_c": scores.score_c}
    if args.json:
        _print_json(result)
    else:
        print(f"score A {scores.score_a:.4f}   score B {scores.score_b:.4f}   "
              f"score C {scores.score_c:.4f}")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    import numpy as np

    from services.client import json_number
    from services.metrics.quality import evaluate_pair
    from services.scorer.protocol import QUALITY_OPTIONS, crop_to_scale, read_rgb

    track = Track(args.track)
    target = read_rgb(args.target)
    if args.output.suffix == ".npy":
        output = np.load(args.output, allow_pickle=False).astype(np.float32)
    else:
        output = read_rgb(args.output).astype(np.float32) / np.float32(255.0)
    if track is Track.A:
        target = crop_to_scale(target)  # the model saw the target cropped to multiples of 4
    quality = evaluate_pair(output, target.astype(np.float32) / np.float32(255.0),
                            QUALITY_OPTIONS[track])
    if args.json:
        _print_json({"track": args.track, "psnr": json_number(quality.psnr),
                     "msssim": json_number(quality.msssim)})
    else:
        print(f"PSNR {quality.psnr:.4f} dB   MS-SSIM {quality.msssim:.6f}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from services.cli.bench import print_report, run_bench
    from services.cli.progress import working

    with working(f"timing {args.model.name} ({args.protocol} protocol)"):
        result = run_bench(args)
    _print_json(result) if args.json else print_report(result)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """0 when the service would accept the model (and, with --mobile, LiteRT converted it)."""
    from services.cli.inspect_model import report_text, run_inspect
    from services.core.errors import PirmError

    try:
        result = run_inspect(args)
    except PirmError as error:
        print(f"pirm inspect: {error}", file=sys.stderr)
        return 2
    _print_json(result) if args.json else print(report_text(result))
    return 0 if result["accepted"] and result.get("mobile", {}).get("converted", True) else 1


def cmd_batch(args: argparse.Namespace) -> int:
    from services.batch import api
    from services.batch.job import BatchSpec, batch_job_name, build_job, manifest_yaml

    say = _say_aside if args.json else _say
    if args.local:
        return _batch_local(args, batch_job_name(args.track), say)
    spec = BatchSpec(
        name=batch_job_name(args.track), track=args.track, models=args.models, data=args.data,
        shards=args.shards, namespace=args.namespace, image=args.image,
        data_claim=args.data_claim, scorer=args.scorer or IN_CLUSTER["scorer"],
    )
    job = build_job(spec)
    if args.dry_run:
        print(manifest_yaml(job), end="")
        return 0
    from kubernetes.client import ApiException
    from kubernetes.config import ConfigException

    outcome = None
    try:
        kubernetes = api.connect(args.kubeconfig)
        api.create_job(kubernetes, spec.namespace, job)
        say(f"created job {spec.namespace}/{spec.name}: {spec.shards} shards")
        for progress in api.follow_job(kubernetes, spec.namespace, spec.name):
            say(progress.summary())
            outcome = progress.outcome
    except ConfigException as error:
        print(f"pirm: no Kubernetes cluster configured: {error}", file=sys.stderr)
        return 2
    except ApiException as error:
        print(f"pirm: Kubernetes API: {api.error_message(error)}", file=sys.stderr)
        return 2
    from services.common.cluster import is_serving

    # After failed shards the jobs still wait for images: only a complete batch is awaited.
    if outcome != "Complete" or not is_serving(spec.scorer):
        say(f"job {spec.name}: {outcome}. Results are on the scorer's leaderboard: "
            f"pirm leaderboard --track {spec.track}")
        if args.json:
            _print_json({"batch_id": spec.name, "outcome": outcome, "jobs": None,
                         "leaderboard": None})
        return 0 if outcome == "Complete" else 1
    say(f"job {spec.name}: {outcome}. The scorer times and scores each model:")
    return _print_batch_results(args, spec.scorer, spec.track, spec.name)


def _batch_local(args: argparse.Namespace, batch_id: str, say: Callable[[str], None]) -> int:
    from services.batch.local import LocalBatch, batch_services, run_shards
    from services.core.errors import PirmError

    batch = LocalBatch(batch_id=batch_id, track=args.track, models=args.models, data=args.data,
                       processes=args.local, scorer=args.scorer, inference=args.inference,
                       metrics=args.metrics, token=_security(args, Role.INTERNAL).token)
    try:
        with batch_services(batch, say) as targets:
            say(f"batch {batch_id}: {batch.processes} local shards, scorer {targets.scorer}")
            with batch_bars(targets.scorer, batch_id, _security(args)):
                shards_ok = run_shards(batch, targets, say)
            if not shards_ok:
                say(f"The jobs wait for the failed shards' images: run those again with "
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
    from services.cli.progress import print_summary_table
    from services.client import leaderboard_rows

    as_json = args.json
    with _scorer_client(args, scorer) as client:
        summaries = follow_jobs(client, batch_job_ids(client, batch_id))
        rows = leaderboard_rows(client.leaderboard(track, by="a"))
    if as_json:
        _print_json({"batch_id": batch_id, "jobs": summaries, "leaderboard": rows})
    else:
        print_summary_table(summaries, title=f"Batch {batch_id}")
        print(leaderboard_table(track, "a", rows))
    return 0 if summaries and all(s["state"] == "SUCCEEDED" for s in summaries) else 1


def follow_jobs(client: ScorerClient, job_ids: list[str]) -> list[dict[str, Any]]:
    """Shows the jobs' progress until each is final; returns their `job_summary`."""
    from services.cli.progress import JobBars
    from services.client import job_summary

    summaries = []
    with JobBars() as bars:
        for job_id in job_ids:
            summary = job_summary(client.get(job_id))
            for job in client.watch(job_id):
                summary = job_summary(job)
                bars.update(summary)
            summaries.append(summary)
    return summaries


@contextmanager
def batch_bars(scorer: str, batch_id: str, security: ChannelSecurity) -> Iterator[None]:
    """Bars of a batch's jobs while its shards report their images (polled every second)."""
    from services.cli.progress import JobBars
    from services.client import ScorerClient, job_summary

    stop = threading.Event()

    def poll() -> None:
        with ScorerClient(scorer, security=security) as client, JobBars() as bars:
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


def cmd_shard(args: argparse.Namespace) -> int:
    from services.batch.shard import ShardSpec, run_shard
    from services.core.errors import PirmError

    setup_logging()
    spec = ShardSpec(index=args.index, shards=args.shards, track=Track(args.track),
                     models=args.models, data=args.data, scorer=args.scorer,
                     inference=args.inference, metrics=args.metrics, batch_id=args.batch_id,
                     team=args.team, security=_security(args, Role.INTERNAL))
    try:
        report = run_shard(spec)
    except PirmError as error:
        print(f"pirm shard: {error}", file=sys.stderr)
        return 2
    if args.json:
        _print_json({"index": spec.index, "shards": spec.shards, "pairs": report.pairs,
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


def add_report_command(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="write an HTML report (leaderboard, figures, crops) of a job or a track")
    subject = report.add_mutually_exclusive_group(required=True)
    subject.add_argument("job_id", nargs="?", help="the job to report on")
    subject.add_argument("--track", choices=["A", "B"], type=str.upper,
                         help="report on a track's leaderboard instead")
    report.add_argument("--phase", choices=[p.value for p in Phase], default="validation",
                        help="with --track: which phase's board")
    report.add_argument("--by", choices=["a", "b", "c"], default="a", help="ranking score")
    report.add_argument("--out", type=Path,
                        help="folder for report.html and its PNG figures (default: "
                             "report-JOB_ID or report-track-A)")
    _scorer_and_json(report)
    report.set_defaults(run=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from services.report.gather import job_report, track_report
    from services.report.html import write_report

    with _scorer_client(args) as client:
        if args.job_id:
            content = job_report(client, args.job_id, args.by)
        else:
            content = track_report(client, Track(args.track), Phase(args.phase), args.by)
    out = args.out or Path(f"report-{args.job_id}" if args.job_id else f"report-track-{args.track}")
    files = write_report(content, out)
    if args.json:
        _print_json({"html": str(files[0]), "figures": [str(f) for f in files[1:]],
                     "track": content.track, "phase": content.phase,
                     "job_id": content.focus_job or None, "entries": len(content.rows),
                     "crops": [c.figures.image for c in content.crops]})
    else:
        print(f"report written to {files[0]} ({len(files) - 1} figures beside it)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.cli.demo import run_demo

    return run_demo(args.data, args.json)


# -- output -------------------------------------------------------------------------------


def _fmt(value: Any, width: int, digits: int) -> str:
    if value is None or value == "":
        return " " * (width - 1) + "-"
    if isinstance(value, str):
        return f"{value:>{width}}"
    return f"{value:>{width}.{digits}f}"


def _print_job(s: dict[str, Any]) -> None:
    print(f"job {s['job_id']}: {s['state']} (track {s['track']}, {s['phase']}, "
          f"{s['images_done']}/{s['images_total']} images)")
    if s["state"] == "SUCCEEDED":
        lo, hi = s["runtime_ci95_ms"]
        print(f"  PSNR {s['psnr']:.4f} dB   MS-SSIM {s['msssim']:.6f}")
        print(f"  runtime {s['runtime_ms']:.1f} ms (95% CI {lo:.1f}-{hi:.1f}, {s['runtime_runs']} "
              f"runs, {s['device']} on {s['node']}); baseline {s['baseline_runtime_ms']:.1f} ms")
        if s["awaiting_mos"]:
            print("  scores: waiting for the MOS (pirm set-mos JOB_ID --mos X)")
        else:
            print(f"  score A {s['score_a']:.3f}   score B {s['score_b']:.3f}   "
                  f"score C {s['score_c']:.3f}")
    if s.get("error"):
        print(f"  error: {s['error']}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
