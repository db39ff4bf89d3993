"""One shard of a batch evaluation (`pirm shard`): of all (model, image) pairs of the batch, in a
stable order, the pairs whose index % shards == index, measured with the scorer's own protocol
code against the inference and metrics services and reported to the scorer.

Every shard submits one sharded job per model; the request id (batch id + the model's SHA-256)
makes the shards' submissions one job. The scorer stores an image reported twice once, and
times and scores each job when all of its images are in.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pirm.v1 import scorer_pb2

from services.client import ScorerClient
from services.core.channel import ChannelSecurity
from services.core.errors import FailedPrecondition, InvalidArgument
from services.core.limits import DEFAULT_MAX_MESSAGE_MB
from services.core.quality import PairQuality
from services.core.track import Phase, Track
from services.scorer.clients import InferencePool, MetricsPool, call_with_retry
from services.scorer.jobs import inference_model_name
from services.scorer.protocol import (
    QualityItem,
    quality_items,
)
from services.scorer.quality_stage import Outcome, QualityStage
from services.scorer.submission import Submission, SubmissionRules

log = logging.getLogger(__name__)

REPORT_BATCH = 16  # images per ReportImageResults call
METRICS_IN_FLIGHT = 2  # metric calls per metrics endpoint, as the scorer's default


@dataclass(frozen=True)
class ShardSpec:
    index: int
    shards: int
    track: Track
    models: str  # a folder of .pb files, or a comma-separated list of them
    data: Path  # the dataset folder, as the scorer sees it too
    scorer: str
    inference: str  # endpoints, as the scorer's --inference (dns:///name:port: every pod)
    metrics: str
    batch_id: str = ""  # empty: derived from the track, the dataset and the models' bytes
    team: str = ""  # empty: each model's file name without .pb
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB
    security: ChannelSecurity = field(default_factory=ChannelSecurity)  # an internal token


@dataclass(frozen=True)
class BatchModel:
    path: Path
    graph_def: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.graph_def).hexdigest()


@dataclass(frozen=True)
class Pair:
    job: scorer_pb2.Job
    item: QualityItem


@dataclass(frozen=True)
class ShardReport:
    pairs: int  # this shard's pairs
    reported: int  # of them, measured and reported now
    skipped_jobs: list[str]  # jobs no longer waiting for shards (already complete or finished)
    failed_jobs: list[str] = field(default_factory=list)  # their model failed on an image here


def shard_arguments(index: str, shards: int, track: str, models: str, data: str, scorer: str,
                    batch_id: str) -> list[str]:
    """`pirm shard`'s arguments, as the Kubernetes Job and `pirm batch --local` run it."""
    return ["shard", "--index", index, "--shards", str(shards), "--track", track,
            "--models", models, "--data", data, "--scorer", scorer, "--batch-id", batch_id]


def batch_models(models: str) -> list[BatchModel]:
    """A folder's .pb files sorted by name, or the files of a comma-separated list."""
    folder = Path(models)
    if folder.is_dir():
        paths = sorted(folder.glob("*.pb"))
        if not paths:
            raise InvalidArgument(f"{folder} has no .pb files to evaluate")
    else:
        paths = [Path(p) for p in models.split(",") if p]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise InvalidArgument(f"model files not found: {', '.join(missing) or models!r}; give a "
                              "folder of .pb files or a comma-separated list of them")
    return [BatchModel(p, p.read_bytes()) for p in paths]


def default_batch_id(track: Track, data: Path, models: list[BatchModel]) -> str:
    """The same models on the same data make the same batch, and so the same jobs."""
    digest = hashlib.sha256(f"{track.value}\n{data.resolve()}".encode())
    for model in models:
        digest.update(model.sha256.encode())
    return f"batch-{digest.hexdigest()[:12]}"


def request_id(batch_id: str, model: BatchModel) -> str:
    return f"{batch_id}/{model.sha256[:16]}"


def submit_batch(client: ScorerClient, spec: ShardSpec, models: list[BatchModel],
                 batch_id: str) -> list[scorer_pb2.Job]:
    """One sharded job per model, the same whichever shard submits it first."""
    return [_submit(client, spec, model, batch_id) for model in models]


def _submit(client: ScorerClient, spec: ShardSpec, model: BatchModel,
            batch_id: str) -> scorer_pb2.Job:
    return call_with_retry("scorer", lambda: client.submit(
        spec.track, model.graph_def, spec.data, team=spec.team or model.path.stem,
        model_name=model.path.name, request_id=request_id(batch_id, model), sharded=True))


def batch_job_ids(client: ScorerClient, batch_id: str) -> list[str]:
    """The batch's jobs (one per model; their request ids start with the batch id)."""
    return [job.job_id for job in client.jobs() if job.request_id.startswith(f"{batch_id}/")]


def shard_pairs(jobs: list[scorer_pb2.Job], items: list[QualityItem], index: int,
                shards: int) -> list[Pair]:
    """Pairs in job (model) order, then image order; this shard's are every shards-th."""
    pairs = [Pair(job, item) for job in jobs for item in items]
    return pairs[index::shards]


def run_shard(spec: ShardSpec) -> ShardReport:
    if not 0 <= spec.index < spec.shards:
        raise InvalidArgument(f"shard index {spec.index} is not in 0..{spec.shards - 1}")
    models = batch_models(spec.models)
    for model in models:  # refused here as the scorer would refuse it, before any work
        SubmissionRules().accept(Submission(spec.track, Phase.VALIDATION, str(spec.data),
                                            spec.team, graph_def=model.graph_def))
    items = quality_items(spec.track, spec.data)
    batch_id = spec.batch_id or default_batch_id(spec.track, spec.data, models)
    with ScorerClient(spec.scorer, spec.max_message_mb, security=spec.security) as scorer:
        jobs = submit_batch(scorer, spec, models, batch_id)
        pairs = shard_pairs(jobs, items, spec.index, spec.shards)
        # A job that no longer waits has all its images (or has finished): nothing to add.
        waiting = [p for p in pairs if p.job.state == scorer_pb2.JOB_STATE_QUEUED]
        skipped = sorted({p.job.job_id for p in pairs} - {p.job.job_id for p in waiting})
        log.info("shard", extra={"index": spec.index, "shards": spec.shards, "batch": batch_id,
                                 "pairs": len(pairs), "skipped_jobs": skipped})
        reporter = Reporter(scorer)
        _measure(spec, models, waiting, reporter)
    return ShardReport(pairs=len(pairs), reported=reporter.reported, skipped_jobs=skipped,
                       failed_jobs=reporter.failed_jobs)


def _measure(spec: ShardSpec, models: list[BatchModel], pairs: list[Pair],
             reporter: Reporter) -> None:
    """prepare -> inference -> metrics -> report, as the scorer's quality stage."""
    inference = InferencePool(spec.inference, spec.max_message_mb, security=spec.security)
    metrics = MetricsPool(spec.metrics, spec.max_message_mb, security=spec.security)
    try:
        graphs = {m.sha256: m.graph_def for m in models}
        for sha256 in sorted({p.job.model_sha256 for p in pairs}):
            inference.load_model(inference_model_name(sha256), graphs[sha256], "", "", "")
        pipeline: QualityStage[Pair] = QualityStage(
            spec.track, item_of=lambda pair: pair.item,
            model_of=lambda pair: inference_model_name(pair.job.model_sha256),
            infer=inference.infer, evaluate=metrics.evaluate,
            inference_workers=inference.parallelism,
            metrics_workers=METRICS_IN_FLIGHT * metrics.parallelism,
            contain_model_errors=True, skip=lambda pair: reporter.ended(pair.job.job_id))
        pipeline.run(pairs, reporter.add)
        reporter.flush()
    finally:
        inference.close()
        metrics.close()


class Reporter:
    """The pipeline's last stage: results go to the scorer in batches, per job; a job whose
    model failed is reported failed at once, and the shard skips its remaining images."""

    def __init__(self, scorer: ScorerClient, batch: int = REPORT_BATCH) -> None:
        self._scorer = scorer
        self._batch = batch
        self._pending: dict[str, dict[str, PairQuality]] = {}
        self._ended: set[str] = set()  # failed here or elsewhere, or cancelled
        self.reported = 0
        self.failed_jobs: list[str] = []

    def ended(self, job_id: str) -> bool:
        return job_id in self._ended

    def add(self, measured: Outcome[Pair]) -> None:
        """A pair's figures, or why its job fails (the model failed on its image: the batch's
        other models go on; anything else, a service unavailable or a dataset that cannot be
        read, stops the shard, which Kubernetes runs again); neither: skipped, its job ended."""
        job_id = measured.work.job.job_id
        if job_id in self._ended:
            return
        if measured.error:
            log.warning("job fails", extra={"job": job_id, "error": measured.error})
            self.failed_jobs.append(job_id)
            self._send(job_id, measured.error)
        elif measured.quality is not None:
            pending = self._pending.setdefault(job_id, {})
            pending[measured.work.item.name] = measured.quality
            if len(pending) >= self._batch:
                self._send(job_id)

    def flush(self) -> None:
        for job_id in list(self._pending):
            self._send(job_id)

    def _send(self, job_id: str, error: str = "") -> None:
        results = self._pending.pop(job_id, {})
        # UNAVAILABLE is retried (a restarting scorer); other statuses become domain errors.
        try:
            job = call_with_retry("scorer", lambda: self._scorer.report_image_results(
                job_id, results, error))
        except FailedPrecondition as refused:  # cancelled, or failed by another shard
            log.warning("job no longer takes results", extra={"job": job_id,
                                                              "reason": str(refused)})
            self._ended.add(job_id)
            return
        self.reported += len(results)
        if error or job.state in _ENDED:
            self._ended.add(job_id)


_ENDED = (scorer_pb2.JOB_STATE_FAILED, scorer_pb2.JOB_STATE_CANCELLED)
