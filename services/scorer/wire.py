"""Protobuf <-> domain conversions of the scorer API, shared by the servicer and the client."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from pirm.v1 import scorer_pb2

from services.core.wire import PHASE_MESSAGES, STATES, TRACK_MESSAGES, timing_to_proto
from services.scorer.jobs import Job
from services.scorer.leaderboard import Entry
from services.scorer.scoring import Scores


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def scores_message(scores: Scores) -> scorer_pb2.Scores:
    return scorer_pb2.Scores(
        score_a=scores.score_a, score_b=scores.score_b, score_c=scores.score_c
    )


def job_message(job: Job) -> scorer_pb2.Job:
    spec = job.spec
    message = scorer_pb2.Job(
        job_id=job.job_id,
        track=TRACK_MESSAGES[spec.track],
        phase=PHASE_MESSAGES[spec.phase],
        state=STATES[job.state],
        team=spec.team,
        model_name=spec.model_name,
        model_sha256=spec.model_sha256,
        dataset=spec.dataset,
        progress=scorer_pb2.Progress(
            images_done=job.images_done, images_total=job.images_total, stage=job.stage
        ),
        error=job.error,
        created=_timestamp(job.created),
        started=_timestamp(job.started),
        finished=_timestamp(job.finished),
        request_id=spec.request_id,
        sharded=spec.sharded,
    )
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
    )
