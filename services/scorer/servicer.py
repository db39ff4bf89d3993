"""gRPC <-> domain translation for the scorer; jobs are run by runner.py."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
from pirm.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.errors import InvalidArgument, Unavailable
from services.common.limits import check_model_size
from services.scorer.evaluation import InferenceBackend
from services.scorer.jobs import JobSpec
from services.scorer.leaderboard import leaderboard
from services.scorer.protocol import quality_items, timing_image_path
from services.scorer.runner import JobRunner
from services.scorer.scoring import TRACKS as TRACK_CONSTANTS
from services.scorer.scoring import Phase
from services.scorer.store import JobStore
from services.scorer.telemetry import job_submitted
from services.scorer.wire import (
    PHASE_MESSAGES,
    PHASES,
    RANK_BY,
    TRACKS,
    job_message,
    scores_message,
    track_of,
)


class ScorerServicer(scorer_pb2_grpc.ScorerServiceServicer):
    def __init__(
        self, store: JobStore, runner: JobRunner, inference: InferenceBackend,
        max_model_bytes: int,
    ) -> None:
        self.store = store
        self.runner = runner
        self.inference = inference
        self.max_model_bytes = max_model_bytes

    def SubmitJob(
        self, request: scorer_pb2.SubmitJobRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.Job:
        spec, model = self._job_spec(request)
        self._validate_model(spec, model)
        job, created = self.store.create_job(spec, model)
        if created:
            job_submitted(spec.track)
        self.runner.notify()
        return job_message(job)

    def GetJob(self, request: scorer_pb2.GetJobRequest, context: grpc.ServicerContext
               ) -> scorer_pb2.Job:
        return job_message(self.store.get_job(request.job_id))

    def WatchJob(
        self, request: scorer_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> Iterator[scorer_pb2.Job]:
        last = None
        version = self.runner.version
        while context.is_active():
            message = job_message(self.store.get_job(request.job_id))
            if message != last:
                yield message
                last = message
            if message.state in (scorer_pb2.JOB_STATE_SUCCEEDED, scorer_pb2.JOB_STATE_FAILED,
                                 scorer_pb2.JOB_STATE_CANCELLED):
                return
            version = self.runner.wait_for_change(version, timeout=1.0)

    def ListJobs(
        self, request: scorer_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.ListJobsResponse:
        track = TRACKS.get(request.track)
        jobs = self.store.list_jobs(team=request.team, track=track)
        return scorer_pb2.ListJobsResponse(jobs=[job_message(job) for job in jobs])

    def Leaderboard(
        self, request: scorer_pb2.LeaderboardRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.LeaderboardResponse:
        track = track_of(request.track)
        phase = PHASES[request.phase]
        by = RANK_BY[request.by]
        entries = leaderboard(self.store.list_jobs(track=track), track, phase, by)
        return scorer_pb2.LeaderboardResponse(
            track=request.track,
            by=request.by or scorer_pb2.RANK_BY_SCORE_A,
            phase=PHASE_MESSAGES[phase],
            entries=[
                scorer_pb2.LeaderboardEntry(
                    rank=e.rank, team=e.team, model_name=e.job.spec.model_name,
                    job_id=e.job.job_id, psnr=e.result.psnr, msssim=e.result.msssim,
                    mos=e.result.mos, runtime_ms=e.result.runtime.timing.median_ms,
                    baseline_runtime_ms=e.result.baseline_runtime.timing.median_ms,
                    scores=scores_message(e.result.scores),
                )
                for e in entries
            ],
        )

    def _job_spec(self, request: scorer_pb2.SubmitJobRequest) -> tuple[JobSpec, bytes | None]:
        track = track_of(request.track)
        phase = PHASES.get(request.phase)
        if phase is None:
            raise InvalidArgument("phase must be validation or final")
        mos = request.mos if request.HasField("mos") else None
        if phase is Phase.FINAL:
            if mos is None:
                raise InvalidArgument("a final-phase job needs the model's MOS (mos)")
            if TRACK_CONSTANTS[track].mos_ref is None and track not in self.runner.settings.mos_ref:
                raise InvalidArgument(
                    f"track {track.value} has no published baseline MOS: start the scorer with "
                    f"--mos-ref-{track.value.lower()} to score its final phase"
                )
        if not request.dataset:
            raise InvalidArgument("give the dataset folder (challenge layout) to evaluate on")
        dataset = Path(request.dataset)
        quality_items(track, dataset)  # refuse a malformed dataset now, not after queueing
        timing_image_path(dataset)
        source = request.WhichOneof("model")
        if source == "graph_def":
            model: bytes | None = request.graph_def
            assert model is not None
            check_model_size(len(model), self.max_model_bytes)
            sha256, repository_model = hashlib.sha256(model).hexdigest(), ""
        elif source == "repository":
            model, sha256 = None, ""
            repository_model = f"{request.repository.name}/{request.repository.version}"
        else:
            raise InvalidArgument("submit the model's .pb bytes or a repository model")
        spec = JobSpec(
            track=track, phase=phase, dataset=str(dataset.resolve()), model_sha256=sha256,
            model_name=request.model_name, team=request.team, request_id=request.request_id,
            mos=mos, input_tensor=request.input_tensor, output_tensor=request.output_tensor,
            repository_model=repository_model,
        )
        return spec, model

    def _validate_model(self, spec: JobSpec, model: bytes | None) -> None:
        """Loading vets the graph (parse, op allowlist, tensor names) so that a bad file is
        refused at submission. If inference is down, the job is accepted and vetted later."""
        try:
            self.inference.load_model(
                spec.inference_name, model, spec.repository_model,
                spec.input_tensor, spec.output_tensor,
            )
        except Unavailable:
            return
