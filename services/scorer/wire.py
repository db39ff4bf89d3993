"""Protobuf <-> domain conversions of the scorer API, shared by the servicer and the client."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pirm.v1 import scorer_pb2

from services.core.jobs import JobState
from services.core.track import Track
from services.core.wire import (
    ENTRY_POLICY_MESSAGES,
    PHASE_MESSAGES,
    STATES,
    TRACK_MESSAGES,
    stopping_to_proto,
    timing_to_proto,
)
from services.scorer.challenge import Challenge, PhaseRule
from services.scorer.jobs import Job
from services.scorer.leaderboard import Entry
from services.scorer.phases import QueueEstimate, redacted
from services.scorer.scoring import Scores
from services.scorer.studies import StudyReport
from services.scorer.study import Answer, QualityRule, StudyDesign
from services.scorer.study_store import Shown


def _timestamp(seconds: float | None) -> Timestamp | None:
    return None if seconds is None else _stamp(seconds)


def _stamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def scores_message(scores: Scores) -> scorer_pb2.Scores:
    return scorer_pb2.Scores(
        score_a=scores.score_a, score_b=scores.score_b, score_c=scores.score_c
    )


@dataclass(frozen=True)
class JobView:
    """What one caller may read of a job: a team does not see the dataset's path of a
    challenge's phase, nor, where per-image results are hidden, an image's name in an error."""

    hide_dataset: bool = False
    hide_images: bool = False
    selected: bool = False
    queue: QueueEstimate | None = None


def job_message(job: Job, view: JobView = JobView()) -> scorer_pb2.Job:
    spec = job.spec
    message = scorer_pb2.Job(
        job_id=job.job_id,
        track=TRACK_MESSAGES[spec.track],
        phase=PHASE_MESSAGES[spec.phase],
        state=STATES[job.state],
        team=spec.team,
        model_name=spec.model_name,
        model_sha256=spec.model_sha256,
        dataset="" if view.hide_dataset else spec.dataset,
        progress=scorer_pb2.Progress(
            images_done=job.images_done, images_total=job.images_total, stage=job.stage
        ),
        error=redacted(job.error, spec.dataset) if view.hide_images else job.error,
        created=_timestamp(job.created),
        started=_timestamp(job.started),
        finished=_timestamp(job.finished),
        request_id=spec.request_id,
        sharded=spec.sharded,
        phase_name=spec.phase_name,
        rerun_of=spec.rerun_of,
        baseline=spec.baseline,
        selected=view.selected,
        failure_kind=job.failure_kind,
    )
    if view.queue is not None and job.state is JobState.QUEUED:
        message.queue_position = view.queue.position
        message.estimated_start.CopyFrom(_stamp(view.queue.start))
    if job.result is not None:
        r = job.result
        c = r.constants
        message.result.CopyFrom(scorer_pb2.Result(
            psnr=r.psnr, msssim=r.msssim, mos=r.mos,
            runtime=timing_to_proto(r.runtime),
            baseline_runtime=timing_to_proto(r.baseline_runtime),
            scores=scores_message(r.scores),
            constants=scorer_pb2.ScoreConstants(
                psnr_base=c.psnr_base, ssim_base=c.ssim_base, kappa=c.kappa, mos_ref=c.mos_ref,
                speed_cap=c.speed_cap,
            ),
            images=r.images,
            software=r.software,
            speed_ratio=r.speed_ratio,
            speed_ratio_ci95_low=r.speed_ratio_ci95[0],
            speed_ratio_ci95_high=r.speed_ratio_ci95[1],
            timing_mode=r.timing_mode,
            stage_seconds=r.stage_seconds,
            timing_stopping=stopping_to_proto(r.timing_stopping),
        ))
    return message


def leaderboard_entry_message(entry: Entry) -> scorer_pb2.LeaderboardEntry:
    result = entry.result
    return scorer_pb2.LeaderboardEntry(
        rank=entry.rank, team=entry.team, model_name=entry.job.spec.model_name,
        job_id=entry.job.job_id, psnr=result.psnr, msssim=result.msssim, mos=result.mos,
        runtime_ms=result.runtime.timing.median_ms,
        baseline_runtime_ms=result.baseline_runtime.timing.median_ms,
        scores=scores_message(result.scores), device=result.runtime.device,
        peak_memory_mb=result.runtime.peak_memory_mb,
        timing_flag=result.runtime.check.failure,
        baseline=entry.baseline,
    )


def challenge_message(challenge: Challenge | None, now: dt.datetime,
                      left_today: Callable[[Track, PhaseRule], int | None]) -> scorer_pb2.Challenge:
    """The challenge as a caller sees it; `left_today`: the caller's submissions left today in
    a phase (None: not a team, or no quota)."""
    if challenge is None:
        return scorer_pb2.Challenge()
    tracks = []
    for rule in challenge.tracks.values():
        constants = rule.constants
        phases = []
        for phase in rule.phases:
            message = scorer_pb2.ChallengePhase(
                name=phase.name, scoring=PHASE_MESSAGES[phase.scoring],
                state=phase.state_at(now), failed_submissions_count=phase.failed_count,
                results=phase.results.value, leaderboard_public=phase.leaderboard_public,
                entry=ENTRY_POLICY_MESSAGES[phase.entry])
            if phase.opens is not None:
                message.opens.CopyFrom(_stamp(phase.opens.timestamp()))
            if phase.closes is not None:
                message.closes.CopyFrom(_stamp(phase.closes.timestamp()))
            if phase.submissions_per_day is not None:
                message.submissions_per_day = phase.submissions_per_day
            left = left_today(rule.track, phase)
            if left is not None:
                message.submissions_left_today = left
            phases.append(message)
        tracks.append(scorer_pb2.ChallengeTrack(
            track=TRACK_MESSAGES[rule.track], phases=phases, baselines=list(rule.baselines),
            constants=scorer_pb2.ScoreConstants(psnr_base=constants.psnr_base,
                                                ssim_base=constants.ssim_base,
                                                mos_ref=constants.mos_ref or 0.0)))
    return scorer_pb2.Challenge(title=challenge.title, tracks=tracks)


# -- user studies ------------------------------------------------------------------------------


def study_rule_of(message: scorer_pb2.StudyRule) -> QualityRule:
    """The organiser's exclusion rule; unset fields keep QualityRule's defaults."""
    default = QualityRule()
    return QualityRule(
        max_control_failures=_given(message, "max_control_failures",
                                    default.max_control_failures),
        max_repeat_gap=_given(message, "max_repeat_gap", default.max_repeat_gap),
        max_inconsistent_repeats=_given(message, "max_inconsistent_repeats",
                                        default.max_inconsistent_repeats),
        min_median_seconds=_given(message, "min_median_seconds", default.min_median_seconds))


def study_design_of(request: scorer_pb2.CreateStudyRequest) -> StudyDesign:
    default = StudyDesign(raters=1)
    return StudyDesign(
        raters=request.raters, ratings_per_pair=request.ratings_per_pair or 3,
        images=request.images, seed=request.seed,
        controls_per_rater=_given(request, "controls_per_rater", default.controls_per_rater),
        repeats_per_rater=_given(request, "repeats_per_rater", default.repeats_per_rater))


def _given(message: Any, name: str, default: Any) -> Any:
    return getattr(message, name) if message.HasField(name) else default


def study_message(report: StudyReport) -> scorer_pb2.Study:
    """A study with its methods' current MOS and each rater's progress and quality figures
    (tokens included: organisers only)."""
    study = report.study
    rule = study.rule
    message = scorer_pb2.Study(
        study_id=study.study_id, track=TRACK_MESSAGES[study.track], phase_name=study.phase_name,
        state=study.state, images=study.images, ratings_per_pair=study.ratings_per_pair,
        seed=study.seed, created=_stamp(study.created), closed=_timestamp(study.closed),
        rule=scorer_pb2.StudyRule(
            max_control_failures=rule.max_control_failures, max_repeat_gap=rule.max_repeat_gap,
            max_inconsistent_repeats=rule.max_inconsistent_repeats,
            min_median_seconds=rule.min_median_seconds))
    for method, mos in zip(study.methods, report.mos, strict=True):
        entry = message.methods.add(
            method=method.method, job_id=method.job_id, team=method.team,
            baseline=method.baseline, mos_low=mos.low, mos_high=mos.high, ratings=mos.ratings,
            images=mos.images, distribution=mos.distribution, ties=mos.ties)
        if math.isfinite(mos.mos):
            entry.mos = mos.mos
    for rater in report.raters:
        done, total = report.progress.get(rater.rater, (0, 0))
        quality = report.quality.get(rater.rater)
        message.raters.add(
            rater=rater.rater, token=rater.token, completion_code=rater.completion_code,
            worker_id=rater.worker_id, assignment_id=rater.assignment_id, done=done,
            total=total, excluded=bool(quality and quality.excluded),
            reasons=quality.reasons if quality else (),
            control_failures=quality.control_failures if quality else 0,
            inconsistent_repeats=quality.inconsistent_repeats if quality else 0,
            median_seconds=quality.median_seconds if quality else math.nan)
    return message


def study_rating_message(answer: Answer) -> scorer_pb2.StudyRating:
    task = answer.task
    return scorer_pb2.StudyRating(
        rater=answer.rater, position=task.position, kind=task.kind.value, method=task.method,
        image=task.image, level=answer.level, seconds=answer.seconds, repeat_of=task.repeat_of)


def study_task_message(shown: Shown) -> scorer_pb2.StudyTask:
    """What the page shows next; a finished rater gets the completion code."""
    if shown.task is None:
        return scorer_pb2.StudyTask(done=shown.done, total=shown.total, finished=True,
                                    completion_code=shown.rater.completion_code)
    return scorer_pb2.StudyTask(task_id=shown.task_id, result_left=shown.task.flipped,
                                done=shown.done, total=shown.total)
