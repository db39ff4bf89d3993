"""Protobuf <-> domain conversions of the scorer API, shared by the servicer and the client."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

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
        phase_name=spec.phase_key,
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
