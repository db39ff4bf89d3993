"""gRPC <-> domain translation for the scorer; jobs are run by runner.py."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
from pirm.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.auth import caller
from services.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from services.core.jobs import JobState
from services.core.limits import check_model_size, confined_path
from services.core.quality import PairQuality
from services.core.track import Phase
from services.core.wire import (
    ENTRY_POLICIES,
    ENTRY_POLICY_MESSAGES,
    PHASE_MESSAGES,
    PHASES,
    RANK_BY,
    TRACKS,
    track_of,
)
from services.scorer.access import check_staff, check_visible, submitting_team, visible_team
from services.scorer.crops import image_crops, job_images
from services.scorer.evaluation import InferenceBackend, rescored
from services.scorer.jobs import Job, JobSpec
from services.scorer.leaderboard import leaderboard
from services.scorer.protocol import quality_items, timing_image_path
from services.scorer.runner import JobRunner
from services.scorer.scoring import TRACKS as TRACK_CONSTANTS
from services.scorer.shards import record_image_results
from services.scorer.store import JobStore, QueueLimits
from services.scorer.telemetry import job_submitted
from services.scorer.wire import job_message, leaderboard_entry_message


class ScorerServicer(scorer_pb2_grpc.ScorerServiceServicer):
    def __init__(
        self, store: JobStore, runner: JobRunner, inference: InferenceBackend,
        max_model_bytes: int, limits: QueueLimits | None = None,
        data_roots: tuple[Path, ...] = (),
        max_watchers: int = 48,
    ) -> None:
        self.store = store
        self.runner = runner
        self.inference = inference
        self.max_model_bytes = max_model_bytes
        self.limits = limits or QueueLimits()
        self.data_roots = data_roots
        # A watch holds one of the server's threads for as long as its job runs: capped below
        # the thread count so that unary calls and health checks always find a thread.
        self.max_watchers = max_watchers
        self._watchers = threading.BoundedSemaphore(max_watchers)

    def SubmitJob(
        self, request: scorer_pb2.SubmitJobRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.Job:
        spec, model, images = self._job_spec(request, submitting_team(caller(),
                                                                      request.team))
        self._validate_model(spec, model)
        job, created = self.store.create_job(spec, model, self.limits, images_total=images)
        if created:
            job_submitted(spec.track)
        self.runner.notify()
        return job_message(job)

    def ReportImageResults(self, request: scorer_pb2.ReportImageResultsRequest,
                           context: grpc.ServicerContext) -> scorer_pb2.Job:
        check_staff(caller(), "reporting shard results")
        results = {r.image: PairQuality(psnr=r.psnr, msssim=r.msssim) for r in request.results}
        job = record_image_results(self.store, request.job_id, results, request.error)
        self.runner.notify()  # watchers see the progress; a complete job can now be claimed
        return job_message(job)

    def GetJobImages(self, request: scorer_pb2.GetJobImagesRequest,
                     context: grpc.ServicerContext) -> scorer_pb2.GetJobImagesResponse:
        self._visible_job(request.job_id)
        return scorer_pb2.GetJobImagesResponse(images=[
            scorer_pb2.ImageResult(image=name, psnr=q.psnr, msssim=q.msssim)
            for name, q in job_images(self.store, request.job_id)])

    def GetImageCrops(self, request: scorer_pb2.GetImageCropsRequest,
                      context: grpc.ServicerContext) -> scorer_pb2.GetImageCropsResponse:
        job = self._visible_job(request.job_id)
        crops = image_crops(job, self.store, self.inference, list(request.images), request.size)
        return scorer_pb2.GetImageCropsResponse(crops=[
            scorer_pb2.ImageCrops(image=c.image, input_png=c.input_png, output_png=c.output_png,
                                  target_png=c.target_png)
            for c in crops])

    def CancelJob(self, request: scorer_pb2.CancelJobRequest, context: grpc.ServicerContext
                  ) -> scorer_pb2.Job:
        self._visible_job(request.job_id)
        return job_message(self.runner.cancel(request.job_id))

    def SetMos(self, request: scorer_pb2.SetMosRequest, context: grpc.ServicerContext
               ) -> scorer_pb2.Job:
        check_staff(caller(), "setting a MOS")
        job = self.store.get_job(request.job_id)
        if job.spec.phase is not Phase.FINAL:
            raise FailedPrecondition(
                f"job {job.job_id} is a validation-phase job: its scores use MS-SSIM, not MOS")
        if job.state is not JobState.SUCCEEDED or job.result is None:
            raise FailedPrecondition(
                f"job {job.job_id} is {job.state.value}: set its MOS once it has succeeded")
        _check_mos(request.mos)
        result = rescored(job.result, job.spec, request.mos, self.runner.settings)
        updated = self.store.rescore(job.job_id, request.mos, result)
        self.runner.notify()
        return job_message(updated)

    def GetJob(self, request: scorer_pb2.GetJobRequest, context: grpc.ServicerContext
               ) -> scorer_pb2.Job:
        return job_message(self._visible_job(request.job_id))

    def WatchJob(
        self, request: scorer_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> Iterator[scorer_pb2.Job]:
        self._visible_job(request.job_id)
        if not self._watchers.acquire(blocking=False):
            raise ResourceExhausted(
                f"{self.max_watchers} jobs are being watched, the most this scorer streams at "
                "once: poll GetJob instead, or watch again later", retry_after_s=5)
        try:
            yield from self._watch(request.job_id, context)
        finally:
            self._watchers.release()

    def _watch(self, job_id: str, context: grpc.ServicerContext) -> Iterator[scorer_pb2.Job]:
        last = None
        version = self.runner.version
        while context.is_active():
            message = job_message(self.store.get_job(job_id))
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
        jobs = self.store.list_jobs(team=visible_team(caller(), request.team), track=track)
        return scorer_pb2.ListJobsResponse(jobs=[job_message(job) for job in jobs])

    def Leaderboard(
        self, request: scorer_pb2.LeaderboardRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.LeaderboardResponse:
        track = track_of(request.track)
        phase = PHASES[request.phase]
        by = RANK_BY[request.by]
        policy = ENTRY_POLICIES[request.policy]
        entries = leaderboard(self.store.list_jobs(track=track), track, phase, by, policy)
        return scorer_pb2.LeaderboardResponse(
            track=request.track,
            by=request.by or scorer_pb2.RANK_BY_SCORE_A,
            phase=PHASE_MESSAGES[phase],
            policy=ENTRY_POLICY_MESSAGES[policy],
            entries=[leaderboard_entry_message(entry) for entry in entries],
        )

    def _visible_job(self, job_id: str) -> Job:
        return check_visible(caller(), self.store.get_job(job_id))

    def _job_spec(self, request: scorer_pb2.SubmitJobRequest, team: str
                  ) -> tuple[JobSpec, bytes | None, int]:
        """The job, its model's bytes (none for a repository model) and its image count."""
        track = track_of(request.track)
        phase = PHASES.get(request.phase)
        if phase is None:
            raise InvalidArgument("phase must be validation or final")
        mos = request.mos if request.HasField("mos") else None
        if mos is not None:
            _check_mos(mos)
        # A final-phase job without a MOS is evaluated and waits, unranked, for SetMos; either
        # way its track needs a baseline MOS to be scored.
        mos_ref_known = (TRACK_CONSTANTS[track].mos_ref is not None
                         or track in self.runner.settings.mos_ref)
        if phase is Phase.FINAL and not mos_ref_known:
            raise InvalidArgument(
                f"track {track.value} has no published baseline MOS: start the scorer with "
                f"--mos-ref-{track.value.lower()} to score its final phase"
            )
        if not request.dataset:
            raise InvalidArgument("give the dataset folder (challenge layout) to evaluate on")
        dataset = confined_path(request.dataset, self.data_roots)
        images = len(quality_items(track, dataset))  # a malformed dataset: refused now
        if images > self.limits.max_images_per_job:
            raise InvalidArgument(
                f"dataset {request.dataset} has {images} images; a job may have at most "
                f"{self.limits.max_images_per_job} (split it into several jobs)")
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
            model_name=request.model_name, team=team, request_id=request.request_id,
            mos=mos, input_tensor=request.input_tensor, output_tensor=request.output_tensor,
            repository_model=repository_model, sharded=request.sharded,
        )
        return spec, model, images

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


def _check_mos(mos: float) -> None:
    if not (math.isfinite(mos) and mos >= 0.0):
        raise InvalidArgument(f"a MOS is a mean of opinion scores (finite, >= 0), got {mos}")
