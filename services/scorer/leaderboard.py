"""Leaderboards like the challenge's published tables: each team's best succeeded job."""

from __future__ import annotations

from dataclasses import dataclass

from services.scorer.jobs import Job, JobResult, JobState
from services.scorer.scoring import Phase, Track

RANKINGS = ("a", "b", "c")


@dataclass(frozen=True)
class Entry:
    rank: int
    team: str
    job: Job
    result: JobResult


def ranking_score(result: JobResult, by: str) -> float:
    return float(getattr(result.scores, f"score_{by}"))


def leaderboard(jobs: list[Job], track: Track, phase: Phase, by: str = "a") -> list[Entry]:
    if by not in RANKINGS:
        raise ValueError(f"rank by one of {RANKINGS}, not {by!r}")
    best: dict[str, tuple[Job, JobResult]] = {}
    for job in jobs:
        result = job.result
        if (job.state is not JobState.SUCCEEDED or result is None or job.spec.track is not track
                or job.spec.phase is not phase):
            continue
        team = job.spec.team or job.spec.model_name or job.job_id
        current = best.get(team)
        if current is None or ranking_score(result, by) > ranking_score(current[1], by):
            best[team] = (job, result)
    ordered = sorted(best.items(), key=lambda kv: (-ranking_score(kv[1][1], by), kv[1][0].created))
    return [
        Entry(rank=index + 1, team=team, job=job, result=result)
        for index, (team, (job, result)) in enumerate(ordered)
    ]
