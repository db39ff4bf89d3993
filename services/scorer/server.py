"""The scorer server: jobs in SQLite, run against the inference and metrics services."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pirm.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.auth import Role
from services.common.config import add_channel_flags, add_server_flags, env_default
from services.common.logs import setup_logging
from services.common.server import (
    ConnectionAge,
    RunningServer,
    ServiceBinding,
    serve_until_signalled,
    server_security,
)
from services.common.server import create_server as create_grpc_server
from services.common.telemetry import start_metrics_endpoint
from services.common.transport import ServerSecurity
from services.core.channel import ChannelSecurity
from services.core.errors import InvalidArgument
from services.core.limits import DEFAULT_MAX_MODEL_BYTES, MIB
from services.core.timing import PROTOCOLS, TimingOptions
from services.core.track import Track
from services.scorer import telemetry
from services.scorer.challenge import Challenge, load_challenge
from services.scorer.clients import InferencePool, MetricsPool
from services.scorer.evaluation import EvaluationSettings
from services.scorer.phases import submit_baselines
from services.scorer.runner import JobRunner
from services.scorer.samples import baseline_graph
from services.scorer.scoring import KAPPA
from services.scorer.servicer import ScorerServicer
from services.scorer.store import JobStore, QueueLimits
from services.scorer.studies import Studies
from services.scorer.study_store import StudyStore
from services.scorer.submission import SubmissionRules

SERVICE_NAME = scorer_pb2.DESCRIPTOR.services_by_name["ScorerService"].full_name
log = logging.getLogger(__name__)


@dataclass
class ScorerConfig:
    inference: str = "127.0.0.1:50051"
    metrics: str = "127.0.0.1:50052"
    store: Path = Path("var/scorer.db")
    state_dir: Path = Path("var")
    baselines: dict[Track, Path | None] = field(default_factory=dict)
    timing: TimingOptions = field(default_factory=TimingOptions)
    baseline_max_age_s: float = 3600.0
    concurrency: int = 1
    metrics_in_flight: int = 2
    limits: QueueLimits = field(default_factory=QueueLimits)
    job_timeout_s: float = EvaluationSettings.job_timeout_s
    shard_silence_s: float = EvaluationSettings.shard_silence_s
    model_idle_s: float = EvaluationSettings.model_idle_s
    data_roots: tuple[Path, ...] = ()  # datasets must lie inside one; () = anywhere
    challenge: Challenge | None = None  # the organisers' definition (--challenge); None: a tool
    timing_mode: str = "interleaved"
    timing_check: str = "fail"
    kappa: float = KAPPA
    mos_ref: dict[Track, float] = field(default_factory=dict)
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    max_message_mb: int = 64
    security: ServerSecurity | None = None  # None: no authentication, loopback only
    backends: ChannelSecurity = field(default_factory=ChannelSecurity)  # to inference, metrics
    connections: ConnectionAge = field(default_factory=ConnectionAge)


def create_server(address: str, config: ScorerConfig, workers: int = 64) -> RunningServer:
    store = JobStore(config.store)
    inference = InferencePool(config.inference, config.max_message_mb,
                              security=config.backends)
    metrics = MetricsPool(config.metrics, config.max_message_mb, security=config.backends)
    baselines = {}
    for track in Track:
        graph, origin = baseline_graph(track, config.baselines.get(track), config.state_dir)
        baselines[track] = graph
        log.info("baseline", extra={"track": track.value, "source": origin})
    challenge = config.challenge
    settings = EvaluationSettings(
        baselines=baselines,
        timing=config.timing,
        baseline_max_age_s=config.baseline_max_age_s,
        timing_mode=config.timing_mode,
        timing_check=config.timing_check,
        kappa=config.kappa,
        mos_ref=config.mos_ref,
        metrics_in_flight=config.metrics_in_flight,
        job_timeout_s=config.job_timeout_s,
        shard_silence_s=config.shard_silence_s,
        model_idle_s=config.model_idle_s,
        constants={track: rule.constants for track, rule in challenge.tracks.items()}
        if challenge is not None else {},
    )
    runner = JobRunner(store, inference, metrics, settings, config.concurrency)
    rules = SubmissionRules(config.max_model_bytes, config.limits, config.data_roots,
                            config.mos_ref, challenge)
    baselines_jobs = submit_baselines(store, challenge)
    if baselines_jobs:
        log.info("baseline entries", extra={"jobs": [j.job_id for j in baselines_jobs]})
    studies = Studies(StudyStore(config.store), store, inference, settings, challenge,
                      config.state_dir / "studies")
    servicer = ScorerServicer(store, runner, inference, rules, studies,
                              # a quarter of the threads stays free of WatchJob streams
                              max_watchers=max(1, workers * 3 // 4))
    binding = ServiceBinding(SERVICE_NAME, scorer_pb2_grpc.add_ScorerServiceServicer_to_server,
                             servicer)
    running = create_grpc_server(address, [binding], config.max_message_mb, workers,
                                 config.security, config.connections)
    running.on_stop.extend([runner.stop, inference.close, metrics.close, studies.store.close,
                            store.close])
    running.on_stop.insert(0, telemetry.watch_store(store))  # unwatched before the store closes
    runner.start()
    running.mark_serving()
    return running


def backend_security(args: argparse.Namespace, security: ServerSecurity) -> ChannelSecurity:
    """How the scorer calls inference and metrics: with the internal token of its tokens
    file (services without authentication need none) and the TLS flags."""
    token = security.tokens.internal_token if security.tokens else None
    if security.tokens is not None and token is None:
        log.warning("the tokens have no internal line: inference and metrics services with "
                    "authentication will refuse this scorer")
    try:
        return ChannelSecurity.from_args(args, token)
    except InvalidArgument as error:
        raise SystemExit(f"error: {error}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pirm serve scorer", description=__doc__)
    add_server_flags(parser, "scorer")
    add_channel_flags(parser)
    env = env_default
    parser.add_argument("--inference", default=env("PIRM_INFERENCE_TARGET", "127.0.0.1:50051"),
                        help="inference endpoints, host:port[,host:port...]; dns:///name:port "
                             "means every address of the name, e.g. a headless Service "
                             "(env PIRM_INFERENCE_TARGET)")
    parser.add_argument("--metrics", default=env("PIRM_METRICS_TARGET", "127.0.0.1:50052"),
                        help="metrics endpoints, as --inference (env PIRM_METRICS_TARGET)")
    parser.add_argument("--store", type=Path,
                        default=env("PIRM_STORE", Path("var/scorer.db"), Path),
                        help="SQLite file of jobs and results (env PIRM_STORE)")
    parser.add_argument("--state-dir", type=Path,
                        default=env("PIRM_STATE_DIR", Path("var"), Path),
                        help="folder for generated baselines (env PIRM_STATE_DIR)")
    for track in Track:
        parser.add_argument(
            f"--baseline-{track.value.lower()}", type=Path,
            default=env(f"PIRM_BASELINE_{track.value}", None, Path),
            help=f"track {track.value} baseline .pb (env PIRM_BASELINE_{track.value}; default: "
                 "the challenge's SRCNN from PIRM_DATA, else a generated SRCNN-shaped graph)",
        )
    defaults = TimingOptions()
    parser.add_argument("--timing-warmup-runs", type=int,
                        default=env("PIRM_TIMING_WARMUP_RUNS", defaults.warmup_runs, int))
    parser.add_argument("--timing-min-runs", type=int,
                        default=env("PIRM_TIMING_MIN_RUNS", defaults.min_runs, int))
    parser.add_argument("--timing-min-seconds", type=float,
                        default=env("PIRM_TIMING_MIN_SECONDS", defaults.min_seconds, float))
    parser.add_argument("--timing-max-runs", type=int,
                        default=env("PIRM_TIMING_MAX_RUNS", defaults.max_runs, int))
    parser.add_argument("--timing-protocol", choices=list(PROTOCOLS),
                        default=env("PIRM_TIMING_PROTOCOL", defaults.protocol),
                        help="sequential: model and baseline pairs until the speed ratio's 95%% "
                             "interval is within +/- --timing-ratio-width; fixed: the earlier "
                             "protocol, --timing-min-runs and --timing-min-seconds on each side "
                             "(env PIRM_TIMING_PROTOCOL)")
    parser.add_argument("--timing-ratio-width", type=float,
                        default=env("PIRM_TIMING_RATIO_WIDTH", defaults.ratio_width, float),
                        help="relative half-width of the ratio's interval that stops a "
                             "sequential timing, 0.02 for +/-2%% (env PIRM_TIMING_RATIO_WIDTH)")
    parser.add_argument("--timing-min-pairs", type=int,
                        default=env("PIRM_TIMING_MIN_PAIRS", defaults.min_pairs, int),
                        help="pairs before a sequential timing may stop (env "
                             "PIRM_TIMING_MIN_PAIRS)")
    parser.add_argument("--timing-max-seconds", type=float,
                        default=env("PIRM_TIMING_MAX_SECONDS", defaults.max_seconds, float),
                        help="seconds of timed runs after which a sequential timing stops, "
                             "the interval as wide as it got; 0: no budget (env "
                             "PIRM_TIMING_MAX_SECONDS)")
    parser.add_argument("--timing-mode", choices=["interleaved", "cached"],
                        default=env("PIRM_TIMING_MODE", "interleaved"),
                        help="time model and baseline alternately in every job, or reuse a "
                             "cached baseline figure (env PIRM_TIMING_MODE)")
    parser.add_argument("--timing-check", choices=["fail", "flag"],
                        default=env("PIRM_TIMING_CHECK", "fail"),
                        help="a model that appears to recognise the timing input (its timing "
                             "is not trusted): fail its job, or score it and flag it on the "
                             "leaderboard (env PIRM_TIMING_CHECK)")
    parser.add_argument("--baseline-max-age-s", type=float,
                        default=env("PIRM_BASELINE_MAX_AGE_S", 3600.0, float),
                        help="re-time the baseline when its figure is older (env "
                             "PIRM_BASELINE_MAX_AGE_S)")
    parser.add_argument("--concurrency", type=int, default=env("PIRM_JOB_CONCURRENCY", 1, int),
                        help="jobs evaluated at once (env PIRM_JOB_CONCURRENCY)")
    parser.add_argument("--job-timeout-s", type=float,
                        default=env("PIRM_JOB_TIMEOUT_S", EvaluationSettings.job_timeout_s, float),
                        help="a job running longer is stopped and failed (env PIRM_JOB_TIMEOUT_S)")
    parser.add_argument("--shard-silence-s", type=float,
                        default=env("PIRM_SHARD_SILENCE_S", EvaluationSettings.shard_silence_s,
                                    float),
                        help="a sharded job no batch shard reported to for this long fails, "
                             "as the platform's failure (env PIRM_SHARD_SILENCE_S)")
    parser.add_argument("--model-idle-s", type=float,
                        default=env("PIRM_MODEL_IDLE_S", EvaluationSettings.model_idle_s, float),
                        help="unload a model no unfinished job needs after this long unused "
                             "(env PIRM_MODEL_IDLE_S)")
    parser.add_argument("--metrics-in-flight", type=int,
                        default=env("PIRM_METRICS_IN_FLIGHT", 2, int),
                        help="metric calls in flight per metrics endpoint (env "
                             "PIRM_METRICS_IN_FLIGHT)")
    limits = QueueLimits()
    parser.add_argument("--max-queued-jobs", type=int,
                        default=env("PIRM_MAX_QUEUED_JOBS", limits.max_queued, int),
                        help="jobs waiting, all teams together, beyond which submissions get "
                             "RESOURCE_EXHAUSTED (env PIRM_MAX_QUEUED_JOBS)")
    parser.add_argument("--max-images-per-job", type=int,
                        default=env("PIRM_MAX_IMAGES_PER_JOB", limits.max_images_per_job, int),
                        help="images a dataset may hold (env PIRM_MAX_IMAGES_PER_JOB)")
    parser.add_argument("--max-jobs-per-team", type=int,
                        default=env("PIRM_MAX_JOBS_PER_TEAM", limits.max_active_per_team, int),
                        help="queued + running jobs of one team (env PIRM_MAX_JOBS_PER_TEAM)")
    parser.add_argument("--data-root", type=Path, action="append",
                        default=[Path(p) for p in env("PIRM_DATA_ROOTS", "").split(os.pathsep)
                                 if p],
                        help="a folder datasets must lie in (repeatable; env PIRM_DATA_ROOTS, "
                             "separated by ':'); none: any folder of this host")
    parser.add_argument("--challenge", type=Path, default=env("PIRM_CHALLENGE", None, Path),
                        help="the challenge's definition (YAML: tracks, phases, datasets, "
                             "quotas, what teams see; see the README's section for organisers); "
                             "none: any caller names its dataset (env PIRM_CHALLENGE)")
    parser.add_argument("--kappa", type=float, default=env("PIRM_KAPPA", KAPPA, float))
    parser.add_argument("--mos-ref-a", type=float, default=env("PIRM_MOS_REF_A", None, float))
    parser.add_argument("--mos-ref-b", type=float, default=env("PIRM_MOS_REF_B", None, float))
    parser.add_argument("--max-model-mb", type=int, default=env("PIRM_MAX_MODEL_MB", 100, int))
    args = parser.parse_args(argv)
    setup_logging()
    security = server_security(args, frozenset(Role))
    try:
        challenge = load_challenge(args.challenge) if args.challenge else None
    except InvalidArgument as error:
        raise SystemExit(f"error: {error}") from None
    config = ScorerConfig(
        inference=args.inference,
        metrics=args.metrics,
        store=args.store,
        state_dir=args.state_dir,
        baselines={Track.A: args.baseline_a, Track.B: args.baseline_b},
        timing=TimingOptions(args.timing_warmup_runs, args.timing_min_runs,
                             args.timing_min_seconds, args.timing_max_runs,
                             args.timing_protocol, args.timing_ratio_width,
                             args.timing_min_pairs, args.timing_max_seconds).validated(),
        baseline_max_age_s=args.baseline_max_age_s,
        timing_mode=args.timing_mode,
        timing_check=args.timing_check,
        concurrency=args.concurrency,
        metrics_in_flight=args.metrics_in_flight,
        job_timeout_s=args.job_timeout_s,
        shard_silence_s=args.shard_silence_s,
        model_idle_s=args.model_idle_s,
        limits=QueueLimits(max_queued=args.max_queued_jobs,
                           max_active_per_team=args.max_jobs_per_team,
                           max_images_per_job=args.max_images_per_job),
        kappa=args.kappa,
        mos_ref={t: v for t, v in ((Track.A, args.mos_ref_a), (Track.B, args.mos_ref_b))
                 if v is not None},
        max_model_bytes=args.max_model_mb * MIB,
        max_message_mb=args.max_message_mb,
        data_roots=tuple(args.data_root),
        security=security,
        backends=backend_security(args, security),
        connections=ConnectionAge.from_args(args),
        challenge=challenge,
    )
    stop_metrics = start_metrics_endpoint(args.host, args.metrics_port, telemetry.REGISTRY)
    serve_until_signalled(lambda: create_server(f"{args.host}:{args.port}", config, args.workers),
                          args.grace_seconds, stop_metrics)
