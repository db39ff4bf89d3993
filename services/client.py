"""Python client of the scorer: what the `pirm` CLI and remote teams use.

Every `pirm` command that talks to the scorer is one method here (submit, wait, status, jobs,
cancel, set_mos, leaderboard, and the report's job_images and image_crops); jobs and
leaderboards come back as the API's protobuf messages (protos/pirm/v1/scorer.proto), and
`job_summary` / `leaderboard_rows` flatten them to the dicts that `--json` prints."""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
from pirm.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

from services.core.channel import ChannelSecurity, open_channel
from services.core.limits import DEFAULT_MAX_MESSAGE_MB
from services.core.quality import PairQuality
from services.core.track import EntryPolicy, Phase, Track
from services.core.wire import (
    ENTRY_POLICY_MESSAGES,
    PHASE_MESSAGES,
    PHASES,
    RANK_BY_MESSAGES,
    TRACK_MESSAGES,
    TRACKS,
)

DEFAULT_TARGET = "127.0.0.1:50053"
SERVICE = scorer_pb2.DESCRIPTOR.services_by_name["ScorerService"].full_name
# Calls that may be repeated without changing the outcome: reads, a cancel, a MOS (the same
# value twice), shard results (an image is stored once), and SubmitJob, since this client
# always sends a request id (the scorer returns the job it already made for that id).
IDEMPOTENT = ("GetJob", "WatchJob", "ListJobs", "Leaderboard", "GetJobImages", "GetImageCrops",
              "CancelJob", "SetMos", "ReportImageResults", "SubmitJob", "GetStudy",
              "GetStudyReport", "CloseStudy", "NextStudyTask", "GetStudyImage",
              # a rating is stored once per (rater, task): a retry returns the first
              "RateStudyTask")
# A watch cut by UNAVAILABLE (a scorer restart, a pod moving, a connection recycled) is
# opened again for this long before the client gives up.
RECONNECT_S = 120.0
# A server going away ends a stream with UNAVAILABLE, or CANCELLED when its grace ran out.
RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def retry_options(max_message_mb: int) -> list[tuple[str, Any]]:
    """gRPC's own retries of UNAVAILABLE for the idempotent calls (a scorer restarting or
    draining, a connection recycled), with a retry buffer as large as a message: a
    SubmitJob carries the model (up to 100 MB), beyond gRPC's 256 KiB default buffer."""
    config = {"methodConfig": [{
        "name": [{"service": SERVICE, "method": method} for method in IDEMPOTENT],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.5s", "maxBackoff": "8s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }]}
    buffer = max_message_mb * 1024 * 1024
    return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config)),
            ("grpc.per_rpc_retry_buffer_size", buffer), ("grpc.retry_buffer_size", buffer)]


FINAL_STATES = (scorer_pb2.JOB_STATE_SUCCEEDED, scorer_pb2.JOB_STATE_FAILED,
                scorer_pb2.JOB_STATE_CANCELLED)


class ScorerClient:
    """A connection to the scorer (`target` host:port; default $PIRM_SCORER_TARGET, as the CLI,
    else 127.0.0.1:50053). `token` is the team's (or organiser's) bearer token, default
    $PIRM_TOKEN; `security` adds TLS files (and may carry the token instead). Use it as a context
    manager, or close() it. Every call has a deadline of `deadline_s`; errors are grpc.RpcError
    with the scorer's status and reason."""

    def __init__(self, target: str = "",
                 max_message_mb: int = DEFAULT_MAX_MESSAGE_MB, deadline_s: float = 120.0,
                 token: str | None = None, security: ChannelSecurity | None = None) -> None:
        target = target or os.environ.get("PIRM_SCORER_TARGET") or DEFAULT_TARGET
        security = security or ChannelSecurity()
        token = token or security.token or os.environ.get("PIRM_TOKEN")
        self._channel = open_channel(target, max_message_mb, security.with_token(token),
                                     retry_options(max_message_mb))
        self._stub = scorer_pb2_grpc.ScorerServiceStub(self._channel)
        self._deadline = deadline_s

    def __enter__(self) -> ScorerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def submit(
        self,
        track: Track | str,
        model: Path | bytes,
        dataset: Path | str | None = None,
        phase: Phase | str = Phase.VALIDATION,
        mos: float | None = None,
        team: str = "",
        model_name: str = "",
        request_id: str = "",
        sharded: bool = False,
        phase_name: str = "",
    ) -> scorer_pb2.Job:
        """A new job, or the job already submitted with this team and request id. With a
        challenge defined, a team names the phase (`phase_name`) and no dataset: the phase's is
        used. A sharded job is measured by batch shards (report_image_results), then timed and
        scored. Without a request id one is made, so that a retried call never makes a second
        job."""
        graph_def = model.read_bytes() if isinstance(model, Path) else model
        request = scorer_pb2.SubmitJobRequest(
            track=TRACK_MESSAGES[Track(track)],
            phase=PHASE_MESSAGES[Phase(phase)],
            graph_def=graph_def,
            model_name=model_name or (model.name if isinstance(model, Path) else ""),
            dataset=str(Path(dataset).resolve()) if dataset else "",
            team=team,
            request_id=request_id or f"auto-{uuid.uuid4().hex}",
            sharded=sharded,
            phase_name=phase_name,
        )
        if mos is not None:
            request.mos = mos
        return self._stub.SubmitJob(request, timeout=self._deadline)

    def get(self, job_id: str) -> scorer_pb2.Job:
        """The job as it stands: state, progress, and its result once succeeded."""
        return self._stub.GetJob(scorer_pb2.GetJobRequest(job_id=job_id), timeout=self._deadline)

    def watch(self, job_id: str, timeout_s: float = 4 * 3600.0) -> Iterator[scorer_pb2.Job]:
        """Yields the job at each change until it is final. A stream cut by UNAVAILABLE (a
        recycled connection, a scorer restart) is opened again and goes on from the job's
        state then, never yielding the same job twice. When the scorer already streams as
        many watches as it allows (RESOURCE_EXHAUSTED), it polls GetJob instead."""
        deadline = time.monotonic() + timeout_s
        last: scorer_pb2.Job | None = None
        cut_since: float | None = None  # when the stream was last cut, if not since reopened
        request = scorer_pb2.GetJobRequest(job_id=job_id)
        while True:
            failure: grpc.RpcError | None = None
            try:
                for job in self._stub.WatchJob(request,
                                               timeout=max(1.0, deadline - time.monotonic())):
                    cut_since = None
                    if job != last:
                        last = job
                        yield job
                if last is not None and last.state in FINAL_STATES:
                    return
            except grpc.RpcError as error:  # the stream ended early otherwise: a server stop
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    yield from self._poll(job_id, deadline - time.monotonic(), last)
                    return
                if error.code() not in RESUMABLE or time.monotonic() >= deadline:
                    raise
                failure = error
            now = time.monotonic()
            cut_since = now if cut_since is None else cut_since
            try:
                if now - cut_since > RECONNECT_S:
                    raise grpc.FutureTimeoutError()
                time.sleep(0.5)
                grpc.channel_ready_future(self._channel).result(
                    timeout=max(0.1, min(RECONNECT_S - (now - cut_since),
                                         deadline - time.monotonic())))
            except grpc.FutureTimeoutError:
                if failure is not None:
                    raise failure from None
                raise TimeoutError(f"the scorer did not answer for {RECONNECT_S:.0f} s while "
                                   f"job {job_id} was watched") from None

    def status(self, job_id: str) -> scorer_pb2.Job:
        """`pirm status`: the same as get()."""
        return self.get(job_id)

    def wait(self, job_id: str, timeout_s: float = 4 * 3600.0) -> scorer_pb2.Job:
        """Blocks until the job is final (succeeded, failed or cancelled) and returns it."""
        job = self.get(job_id)
        for update in self.watch(job_id, timeout_s):
            job = update
        return job

    def _poll(self, job_id: str, timeout_s: float, last: scorer_pb2.Job | None = None,
              every_s: float = 2.0) -> Iterator[scorer_pb2.Job]:
        """The job each time it changed (from `last`), until it is final or `timeout_s` has
        passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job != last:
                yield job
                last = job
            if job.state in FINAL_STATES or time.monotonic() > deadline:
                return
            time.sleep(every_s)

    def cancel(self, job_id: str) -> scorer_pb2.Job:
        """Stops a queued or running job; a finished job comes back unchanged."""
        return self._stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=job_id),
                                    timeout=self._deadline)

    def set_mos(self, job_id: str, mos: float) -> scorer_pb2.Job:
        """Gives a finished final-phase job its MOS; the job comes back rescored."""
        return self._stub.SetMos(scorer_pb2.SetMosRequest(job_id=job_id, mos=mos),
                                 timeout=self._deadline)

    def report_image_results(self, job_id: str, results: Mapping[str, PairQuality],
                             error: str = "") -> scorer_pb2.Job:
        """A batch shard's figures for images of a sharded job, by image file name; an image
        already stored keeps its first figures. `error`: the shard could not evaluate an image
        of the job, which then fails with this reason."""
        request = scorer_pb2.ReportImageResultsRequest(job_id=job_id, error=error, results=[
            scorer_pb2.ImageResult(image=image, psnr=q.psnr, msssim=q.msssim)
            for image, q in results.items()])
        return self._stub.ReportImageResults(request, timeout=self._deadline)

    def jobs(self, team: str = "", track: Track | str | None = None) -> list[scorer_pb2.Job]:
        """All jobs, oldest first; only a team's, or a track's, if given."""
        request = scorer_pb2.ListJobsRequest(
            team=team,
            track=TRACK_MESSAGES[Track(track)] if track else common_pb2.TRACK_UNSPECIFIED,
        )
        return list(self._stub.ListJobs(request, timeout=self._deadline).jobs)

    def leaderboard(
        self, track: Track | str, by: str = "a", phase: Phase | str = Phase.VALIDATION,
        policy: EntryPolicy | str | None = None, phase_name: str = "",
    ) -> scorer_pb2.LeaderboardResponse:
        """One entry per team (the job it selected, else its best result by the ranking, or
        its latest; default: the phase's rule, without a challenge its best), the baselines
        among them. `phase_name`: a challenge's phase (default: the one named like `phase`)."""
        request = scorer_pb2.LeaderboardRequest(
            track=TRACK_MESSAGES[Track(track)], by=RANK_BY_MESSAGES[by],
            phase=PHASE_MESSAGES[Phase(phase)], phase_name=phase_name,
            policy=(ENTRY_POLICY_MESSAGES[EntryPolicy(policy)] if policy
                    else scorer_pb2.ENTRY_POLICY_UNSPECIFIED),
        )
        return self._stub.Leaderboard(request, timeout=self._deadline)

    def challenge(self) -> scorer_pb2.Challenge:
        """The challenge's tracks and phases as this caller sees them (its quota left today);
        no tracks when the scorer runs without a definition."""
        return self._stub.GetChallenge(scorer_pb2.GetChallengeRequest(), timeout=self._deadline)

    def select(self, job_id: str) -> scorer_pb2.Job:
        """Makes one of the team's succeeded jobs the one standing for it in its phase."""
        return self._stub.SelectSubmission(scorer_pb2.SelectSubmissionRequest(job_id=job_id),
                                           timeout=self._deadline)

    def rerun(self, track: Track | str, phase_name: str, every: bool = False,
              into_phase_name: str = "") -> list[scorer_pb2.Job]:
        """Organisers: the phase's standing submissions (every succeeded one with `every`)
        evaluated again, as new jobs, in `into_phase_name` (default: the same phase)."""
        request = scorer_pb2.RerunPhaseRequest(track=TRACK_MESSAGES[Track(track)],
                                               phase_name=phase_name, all=every,
                                               into_phase_name=into_phase_name)
        return list(self._stub.RerunPhase(request, timeout=self._deadline).jobs)

    def publish(self, track: Track | str, phase_name: str) -> scorer_pb2.LeaderboardResponse:
        """Organisers: makes a hidden leaderboard public; returns it."""
        request = scorer_pb2.PublishLeaderboardRequest(track=TRACK_MESSAGES[Track(track)],
                                                       phase_name=phase_name)
        return self._stub.PublishLeaderboard(request, timeout=self._deadline)

    def job_images(self, job_id: str) -> list[scorer_pb2.ImageResult]:
        """Each image's PSNR and MS-SSIM measured so far, in the dataset's order (the job's
        figures are their means)."""
        return list(self._stub.GetJobImages(scorer_pb2.GetJobImagesRequest(job_id=job_id),
                                            timeout=self._deadline).images)

    def image_crops(self, job_id: str, images: list[str],
                    size: int = 0) -> list[scorer_pb2.ImageCrops]:
        """PNG crops (the same centre window, `size` px square, default 128) of the model
        input, the model output and the target for up to 8 of the job's images; the scorer
        runs the job's model again on them."""
        request = scorer_pb2.GetImageCropsRequest(job_id=job_id, images=images, size=size)
        return list(self._stub.GetImageCrops(request, timeout=self._deadline).crops)


    # -- the user study ------------------------------------------------------------------

    def create_study(self, study_id: str, track: Track | str, phase_name: str, raters: int,
                     ratings_per_pair: int = 3, images: int = 0, seed: int = 0,
                     controls_per_rater: int | None = None,
                     repeats_per_rater: int | None = None,
                     rule: scorer_pb2.StudyRule | None = None,
                     timeout_s: float = 3600.0) -> scorer_pb2.Study:
        """Organisers: a user study of a final phase's finalists (each team's standing
        submission and the baselines) on all the phase's images or `images` of them (seeded),
        with `raters` rater links (StudyRater.token). The scorer runs every finalist on the
        images before answering (hence the long deadline)."""
        request = scorer_pb2.CreateStudyRequest(
            study_id=study_id, track=TRACK_MESSAGES[Track(track)], phase_name=phase_name,
            raters=raters, ratings_per_pair=ratings_per_pair, images=images, seed=seed,
            rule=rule or scorer_pb2.StudyRule())
        if controls_per_rater is not None:
            request.controls_per_rater = controls_per_rater
        if repeats_per_rater is not None:
            request.repeats_per_rater = repeats_per_rater
        return self._stub.CreateStudy(request, timeout=timeout_s)

    def study(self, study_id: str) -> scorer_pb2.Study:
        """Organisers: the study's progress, each method's MOS so far, each rater's checks."""
        return self._stub.GetStudy(scorer_pb2.GetStudyRequest(study_id=study_id),
                                   timeout=self._deadline)

    def close_study(self, study_id: str) -> scorer_pb2.Study:
        """Organisers: no more ratings; each finalist's job gets its MOS and is rescored."""
        return self._stub.CloseStudy(scorer_pb2.GetStudyRequest(study_id=study_id),
                                     timeout=self._deadline)

    def study_report(self, study_id: str) -> scorer_pb2.StudyReport:
        """Organisers: the study with every stored rating and a few example crops."""
        return self._stub.GetStudyReport(scorer_pb2.GetStudyRequest(study_id=study_id),
                                         timeout=self._deadline)

    def next_study_task(self, token: str, worker_id: str = "",
                        assignment_id: str = "") -> scorer_pb2.StudyTask:
        """A rater's current task (finished: the completion code)."""
        return self._stub.NextStudyTask(scorer_pb2.NextStudyTaskRequest(
            token=token, worker_id=worker_id, assignment_id=assignment_id),
            timeout=self._deadline)

    def rate_study_task(self, token: str, task_id: str, level: int) -> scorer_pb2.StudyTask:
        """A rater's answer (1..4), stored once; returns the rater's next task."""
        return self._stub.RateStudyTask(scorer_pb2.RateStudyTaskRequest(
            token=token, task_id=task_id, level=level), timeout=self._deadline)

    def study_image(self, token: str, task_id: str, side: str) -> bytes:
        """The PNG of a rater's task: side `input` or `result`."""
        return bytes(self._stub.GetStudyImage(scorer_pb2.GetStudyImageRequest(
            token=token, task_id=task_id, side=side), timeout=self._deadline).png)


def leaderboard_rows(board: scorer_pb2.LeaderboardResponse) -> list[dict[str, Any]]:
    """The leaderboard as flat rows (`pirm leaderboard --json`)."""
    return [
        {"rank": e.rank, "team": e.team, "model_name": e.model_name, "job_id": e.job_id,
         "psnr": e.psnr, "msssim": e.msssim, "mos": e.mos if e.HasField("mos") else None,
         "runtime_ms": e.runtime_ms, "baseline_runtime_ms": e.baseline_runtime_ms,
         "device": e.device, "peak_memory_mb": e.peak_memory_mb,
         "score_a": e.scores.score_a, "score_b": e.scores.score_b, "score_c": e.scores.score_c,
         "timing_flag": e.timing_flag, "baseline": e.baseline}
        for e in board.entries
    ]


def challenge_summary(challenge: scorer_pb2.Challenge) -> dict[str, Any]:
    """The challenge as `pirm challenge --json` prints it: tracks, phases, their state and the
    caller's quota left today (null: no quota, or not a team)."""
    def when(stamp: Any, present: bool) -> str | None:
        return stamp.ToJsonString() if present else None

    return {"title": challenge.title, "defined": bool(challenge.tracks), "tracks": [
        {"track": TRACKS[t.track].value, "baselines": list(t.baselines),
         "psnr_base": t.constants.psnr_base, "ssim_base": t.constants.ssim_base,
         "mos_ref": t.constants.mos_ref or None,
         "phases": [{
             "name": p.name, "scoring": PHASES[p.scoring].value, "state": p.state,
             "opens": when(p.opens, p.HasField("opens")),
             "closes": when(p.closes, p.HasField("closes")),
             "submissions_per_day": (p.submissions_per_day
                                     if p.HasField("submissions_per_day") else None),
             "submissions_left_today": (p.submissions_left_today
                                        if p.HasField("submissions_left_today") else None),
             "failed_submissions_count": p.failed_submissions_count,
             "results": p.results, "leaderboard_public": p.leaderboard_public,
             "entry": "last" if p.entry == scorer_pb2.ENTRY_POLICY_LATEST else "best",
         } for p in t.phases]}
        for t in challenge.tracks]}


def json_number(value: float) -> float | str:
    """JSON has no infinity or NaN: identical images (PSNR = inf) are written as the string
    "inf", the scores of a final-phase job waiting for its MOS as "nan"."""
    return value if math.isfinite(value) else str(value)


def stopping_summary(stopping: common_pb2.TimingStopping) -> dict[str, Any]:
    """How the timing ran: protocol, pairs and runs per pair, the ratio's interval width
    reached (relative half-width) and why it stopped, what an earlier timing spared."""
    return {
        "protocol": stopping.protocol, "pairs": stopping.pairs,
        "solution_block": stopping.solution_block, "baseline_block": stopping.baseline_block,
        "width": json_number(stopping.width), "reason": stopping.reason,
        "reused": list(stopping.reused),
    }


def ratio_text(summary: dict[str, Any]) -> str:
    """A succeeded job's speed ratio, its interval and how the timing stopped, in a line."""
    low, high = (value if isinstance(value, str) else f"{value:.3f}"
                 for value in summary["speed_ratio_ci95"])
    text = f"speed ratio {summary['speed_ratio']:.3f} (95% CI {low}-{high}"
    stopping = summary.get("timing_stopping") or {}
    width = stopping.get("width")
    if stopping.get("protocol") and isinstance(width, float):
        text += f", +/-{100 * width:.1f}%"
    if stopping.get("pairs"):
        blocks = ""
        if stopping["solution_block"] > 1 or stopping["baseline_block"] > 1:
            blocks = (f" of {stopping['solution_block']} model and {stopping['baseline_block']}"
                      " baseline runs")
        text += f"; {stopping['protocol']}: {stopping['pairs']} pairs{blocks}"
    if stopping.get("reason"):
        text += f", stopped: {stopping['reason']}"
    if stopping.get("reused"):
        text += f"; reused: {', '.join(stopping['reused'])}"
    return text + ")"


def timing_check_summary(check: common_pb2.TimingCheck) -> dict[str, Any]:
    """Whether the model appeared to recognise the timing input, and the probes' figures."""
    return {
        "checked": check.checked, "passed": check.checked and not check.failure,
        "failure": check.failure, "timed_ms": check.timed_ms,
        "consistency_db": json_number(check.consistency_db),
        "probes": [{"name": p.name, "shape": list(p.shape), "median_ms": p.median_ms,
                    "expected_ms": p.expected_ms} for p in check.probes],
    }


def job_summary(job: scorer_pb2.Job) -> dict[str, Any]:
    """The flat JSON object of `pirm submit/status --json`."""
    summary: dict[str, Any] = {
        "job_id": job.job_id,
        "state": scorer_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_"),
        "track": TRACKS[job.track].value if job.track in TRACKS else "",
        "phase": PHASES[job.phase].value,
        "team": job.team,
        "model_name": job.model_name,
        "model_sha256": job.model_sha256,
        "phase_name": job.phase_name,
        "images_done": job.progress.images_done,
        "images_total": job.progress.images_total,
        "stage": job.progress.stage,
        "selected": job.selected,
        "baseline": job.baseline,
        "rerun_of": job.rerun_of,
    }
    if job.state == scorer_pb2.JOB_STATE_QUEUED and job.queue_position:
        summary.update(queue_position=job.queue_position,
                       estimated_start=job.estimated_start.ToJsonString())
    if job.state == scorer_pb2.JOB_STATE_SUCCEEDED:
        r = job.result
        summary.update(
            psnr=json_number(r.psnr),
            msssim=json_number(r.msssim),
            mos=r.mos if r.HasField("mos") else None,
            runtime_ms=r.runtime.median_ms,
            runtime_ci95_ms=[r.runtime.ci95_low_ms, r.runtime.ci95_high_ms],
            runtime_runs=r.runtime.runs,
            baseline_runtime_ms=r.baseline_runtime.median_ms,
            baseline_runtime_ci95_ms=[r.baseline_runtime.ci95_low_ms,
                                      r.baseline_runtime.ci95_high_ms],
            speed_ratio=r.speed_ratio,
            # Unbounded (inf) while a timing has fewer pairs than its interval needs.
            speed_ratio_ci95=[json_number(r.speed_ratio_ci95_low),
                              json_number(r.speed_ratio_ci95_high)],
            timing_mode=r.timing_mode,
            timing_stopping=stopping_summary(r.timing_stopping),
            peak_memory_mb=r.runtime.peak_memory_mb,
            device=r.runtime.device,
            node=r.runtime.node,
            score_a=json_number(r.scores.score_a),
            score_b=json_number(r.scores.score_b),
            score_c=json_number(r.scores.score_c),
            awaiting_mos=math.isnan(r.scores.score_a),
            images=r.images,
            stage_seconds=dict(sorted(r.stage_seconds.items())),
            timing_check=timing_check_summary(r.runtime.check),
        )
    if job.error:
        summary["error"] = job.error
        summary["failure_kind"] = job.failure_kind
    return summary
