"""gRPC <-> domain translation for the scorer; jobs are run by runner.py."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import grpc
from pirm.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.auth import caller
from services.core.errors import InvalidArgument, ResourceExhausted
from services.core.jobs import JobState
from services.core.quality import PairQuality
from services.core.track import EntryPolicy, Track
from services.core.wire import (
    ENTRY_POLICIES,
    ENTRY_POLICY_MESSAGES,
    PHASE_MESSAGES,
    PHASES,
    RANK_BY,
    RANK_BY_MESSAGES,
    TRACK_MESSAGES,
    TRACKS,
    track_of,
)
from services.scorer.access import check_staff, check_visible, submitting_team, visible_team
from services.scorer.crops import image_crops, job_images
from services.scorer.evaluation import InferenceBackend
from services.scorer.jobs import Job
from services.scorer.phases import (
    QueueEstimate,
    board,
    check_results_visible,
    hides_images,
    left_today,
    phase_of,
    queue_estimates,
    rerun_phase,
    select,
)
from services.scorer.runner import JobRunner
from services.scorer.shards import record_image_results
from services.scorer.store import JobStore
from services.scorer.studies import Studies
from services.scorer.submission import Submission, SubmissionRules, vet_model, with_mos
from services.scorer.telemetry import job_submitted
from services.scorer.wire import (
    JobView,
    challenge_message,
    job_message,
    leaderboard_entry_message,
    study_design_of,
    study_message,
    study_rating_message,
    study_rule_of,
    study_task_message,
)


class ScorerServicer(scorer_pb2_grpc.ScorerServiceServicer):
    def __init__(
        self, store: JobStore, runner: JobRunner, inference: InferenceBackend,
        rules: SubmissionRules, studies: Studies, max_watchers: int = 48,
    ) -> None:
        self.studies = studies
        self.store = store
        self.runner = runner
        self.inference = inference
        self.rules = rules
        # A watch holds one of the server's threads for as long as its job runs: capped below
        # the thread count so that unary calls and health checks always find a thread.
        self.max_watchers = max_watchers
        self._watchers = threading.BoundedSemaphore(max_watchers)

    def SubmitJob(
        self, request: scorer_pb2.SubmitJobRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.Job:
        principal = caller()
        accepted = self.rules.accept(submission_of(request, submitting_team(principal,
                                                                            request.team)),
                                     by_team=principal.is_team)
        vet_model(accepted, self.inference)
        job, created = self.store.create_job(accepted.spec, accepted.model, self.rules.limits,
                                             images_total=accepted.images,
                                             quota=accepted.quota)
        if created:
            job_submitted(accepted.spec.track)
        self.runner.notify()
        return self._message(job)

    def ReportImageResults(self, request: scorer_pb2.ReportImageResultsRequest,
                           context: grpc.ServicerContext) -> scorer_pb2.Job:
        check_staff(caller(), "reporting shard results")
        results = {r.image: PairQuality(psnr=r.psnr, msssim=r.msssim) for r in request.results}
        job = record_image_results(self.store, request.job_id, results, request.error)
        self.runner.notify()  # watchers see the progress; a complete job can now be claimed
        return self._message(job)

    def GetJobImages(self, request: scorer_pb2.GetJobImagesRequest,
                     context: grpc.ServicerContext) -> scorer_pb2.GetJobImagesResponse:
        job = self._visible_job(request.job_id)
        check_results_visible(self.rules.challenge, caller(), job, crops=False)
        return scorer_pb2.GetJobImagesResponse(images=[
            scorer_pb2.ImageResult(image=name, psnr=q.psnr, msssim=q.msssim)
            for name, q in job_images(self.store, request.job_id)])

    def GetImageCrops(self, request: scorer_pb2.GetImageCropsRequest,
                      context: grpc.ServicerContext) -> scorer_pb2.GetImageCropsResponse:
        job = self._visible_job(request.job_id)
        check_results_visible(self.rules.challenge, caller(), job, crops=True)
        crops = image_crops(job, self.store, self.inference, list(request.images), request.size)
        return scorer_pb2.GetImageCropsResponse(crops=[
            scorer_pb2.ImageCrops(image=c.image, input_png=c.input_png, output_png=c.output_png,
                                  target_png=c.target_png)
            for c in crops])

    def CancelJob(self, request: scorer_pb2.CancelJobRequest, context: grpc.ServicerContext
                  ) -> scorer_pb2.Job:
        self._visible_job(request.job_id)
        return self._message(self.runner.cancel(request.job_id))

    def SetMos(self, request: scorer_pb2.SetMosRequest, context: grpc.ServicerContext
               ) -> scorer_pb2.Job:
        check_staff(caller(), "setting a MOS")
        job = self.store.get_job(request.job_id)
        result = with_mos(job, request.mos, self.runner.settings)
        updated = self.store.rescore(job.job_id, request.mos, result)
        self.runner.notify()
        return self._message(updated)

    def GetJob(self, request: scorer_pb2.GetJobRequest, context: grpc.ServicerContext
               ) -> scorer_pb2.Job:
        return self._message(self._visible_job(request.job_id))

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
            message = self._message(self.store.get_job(job_id))
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
        queue = queue_estimates(self.store, self.runner.concurrency)
        return scorer_pb2.ListJobsResponse(jobs=[self._message(job, queue) for job in jobs])

    def Leaderboard(
        self, request: scorer_pb2.LeaderboardRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.LeaderboardResponse:
        track = track_of(request.track)
        phase = request.phase_name or PHASES[request.phase].value
        policy = (None if request.policy == scorer_pb2.ENTRY_POLICY_UNSPECIFIED
                  else ENTRY_POLICIES[request.policy])  # unspecified: the phase's rule
        return self._board(track, phase, RANK_BY[request.by], policy)

    def GetChallenge(self, request: scorer_pb2.GetChallengeRequest,
                     context: grpc.ServicerContext) -> scorer_pb2.Challenge:
        principal, now = caller(), dt.datetime.now(dt.UTC)
        return challenge_message(self.rules.challenge, now, lambda track, rule: left_today(
            self.store, principal, rule, track, now))

    def SelectSubmission(self, request: scorer_pb2.SelectSubmissionRequest,
                         context: grpc.ServicerContext) -> scorer_pb2.Job:
        job = select(self.store, self._visible_job(request.job_id))
        self.runner.notify()
        return self._message(job)

    def RerunPhase(self, request: scorer_pb2.RerunPhaseRequest,
                   context: grpc.ServicerContext) -> scorer_pb2.RerunPhaseResponse:
        check_staff(caller(), "rerunning a phase")
        jobs = rerun_phase(self.store, self.rules.challenge, track_of(request.track),
                           request.phase_name, request.all, request.into_phase_name)
        self.runner.notify()
        return scorer_pb2.RerunPhaseResponse(jobs=[self._message(job) for job in jobs])

    def PublishLeaderboard(self, request: scorer_pb2.PublishLeaderboardRequest,
                           context: grpc.ServicerContext) -> scorer_pb2.LeaderboardResponse:
        check_staff(caller(), "publishing a leaderboard")
        track = track_of(request.track)
        if self.rules.challenge is not None:
            self.rules.challenge.phase(track, request.phase_name)  # a phase it has
        self.store.publish(track, request.phase_name)
        return self._board(track, request.phase_name, "a", None)

    # -- the user study --------------------------------------------------------------------

    def CreateStudy(self, request: scorer_pb2.CreateStudyRequest,
                    context: grpc.ServicerContext) -> scorer_pb2.Study:
        check_staff(caller(), "creating a user study")
        study = self.studies.create(request.study_id, track_of(request.track),
                                    request.phase_name or "final", study_design_of(request),
                                    study_rule_of(request.rule))
        return study_message(self.studies.report(study.study_id))

    def GetStudy(self, request: scorer_pb2.GetStudyRequest, context: grpc.ServicerContext
                 ) -> scorer_pb2.Study:
        check_staff(caller(), "reading a user study")
        return study_message(self.studies.report(request.study_id))

    def CloseStudy(self, request: scorer_pb2.GetStudyRequest, context: grpc.ServicerContext
                   ) -> scorer_pb2.Study:
        check_staff(caller(), "closing a user study")
        report = self.studies.close(request.study_id)
        self.runner.notify()  # the final leaderboard changed
        return study_message(report)

    def GetStudyReport(self, request: scorer_pb2.GetStudyRequest,
                       context: grpc.ServicerContext) -> scorer_pb2.StudyReport:
        check_staff(caller(), "reading a user study's report")
        report = self.studies.report(request.study_id)
        return scorer_pb2.StudyReport(
            study=study_message(report),
            ratings=[study_rating_message(answer) for answer in report.answers],
            examples=[scorer_pb2.StudyExample(image=name, input_png=source, result_png=results)
                      for name, source, results in self.studies.example_pngs(request.study_id)])

    def NextStudyTask(self, request: scorer_pb2.NextStudyTaskRequest,
                      context: grpc.ServicerContext) -> scorer_pb2.StudyTask:
        check_staff(caller(), "serving a rater's task")
        return study_task_message(self.studies.next_task(request.token, request.worker_id,
                                                         request.assignment_id))

    def RateStudyTask(self, request: scorer_pb2.RateStudyTaskRequest,
                      context: grpc.ServicerContext) -> scorer_pb2.StudyTask:
        check_staff(caller(), "recording a rating")
        level, now, shown = self.studies.rate(request.token, request.task_id, request.level)
        message = study_task_message(shown)
        message.recorded_level, message.recorded_now = level, now
        return message

    def GetStudyImage(self, request: scorer_pb2.GetStudyImageRequest,
                      context: grpc.ServicerContext) -> scorer_pb2.StudyImage:
        check_staff(caller(), "serving a study image")
        return scorer_pb2.StudyImage(png=self.studies.task_image(request.token,
                                                                 request.task_id, request.side))

    def _board(self, track: Track, phase: str, by: str,
               policy: EntryPolicy | None) -> scorer_pb2.LeaderboardResponse:
        shown = board(self.store, self.rules.challenge, caller(), track, phase, by, policy)
        return scorer_pb2.LeaderboardResponse(
            track=TRACK_MESSAGES[track], by=RANK_BY_MESSAGES[by],
            phase=PHASE_MESSAGES[shown.scoring], policy=ENTRY_POLICY_MESSAGES[shown.policy],
            entries=[leaderboard_entry_message(entry) for entry in shown.entries],
            phase_name=phase, hidden=shown.hidden)

    def _message(self, job: Job, queue: dict[str, QueueEstimate] | None = None
                 ) -> scorer_pb2.Job:
        """The job as this caller may read it (wire.JobView)."""
        principal = caller()
        if queue is None and job.state is JobState.QUEUED:
            queue = queue_estimates(self.store, self.runner.concurrency)
        in_phase = phase_of(self.rules.challenge, job) is not None
        selected = self.store.selections(job.spec.track, job.spec.phase_name).get(
            job.spec.team) == job.job_id
        return job_message(job, JobView(
            hide_dataset=principal.is_team and in_phase,
            hide_images=hides_images(self.rules.challenge, principal, job),
            selected=selected, queue=(queue or {}).get(job.job_id)))

    def _visible_job(self, job_id: str) -> Job:
        return check_visible(caller(), self.store.get_job(job_id))


def submission_of(request: scorer_pb2.SubmitJobRequest, team: str) -> Submission:
    phase = PHASES.get(request.phase)
    if phase is None:
        raise InvalidArgument("phase must be validation or final")
    source = request.WhichOneof("model")
    return Submission(
        track=track_of(request.track), phase=phase, dataset=request.dataset, team=team,
        phase_name=request.phase_name,
        graph_def=request.graph_def if source == "graph_def" else None,
        repository_model=(f"{request.repository.name}/{request.repository.version}"
                          if source == "repository" else ""),
        model_name=request.model_name, request_id=request.request_id,
        mos=request.mos if request.HasField("mos") else None,
        input_tensor=request.input_tensor, output_tensor=request.output_tensor,
        sharded=request.sharded)
