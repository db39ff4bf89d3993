"""Leaderboards like the challenge's published tables: one result per team, ranked by score A,
B or C. Which result stands for a team is the board's policy: its best, or its latest."""

from __future__ import annotations

from dataclasses import dataclass

from services.core.jobs import JobState
from services.core.track import RANKINGS, EntryPolicy, Phase, Track
from services.scorer.jobs import Job, JobResult


@dataclass(frozen=True)
class Entry:
    rank: int
    team: str
    job: Job
    result: JobResult


def ranking_score(result: JobResult, by: str) -> float:
    return float(getattr(result.scores, f"score_{by}"))


def leaderboard(jobs: list[Job], track: Track, phase: Phase, by: str = "a",
                policy: EntryPolicy = EntryPolicy.BEST) -> list[Entry]:
    """Succeeded, scored jobs of the track and phase (a final-phase job waiting for its MOS is
    not ranked), one per team, best score first; ties go to the earlier submission."""
    if by not in RANKINGS:
        raise ValueError(f"rank by one of {RANKINGS}, not {by!r}")
    chosen: dict[str, tuple[Job, JobResult]] = {}
    for job in jobs:
        result = job.result
        if (job.state is not JobState.SUCCEEDED or result is None or job.spec.track is not track
                or job.spec.phase is not phase or result.awaiting_mos):
            continue
        team = job.spec.team or job.spec.model_name or job.job_id
        current = chosen.get(team)
        if current is None or _replaces(job, result, current, by, policy):
            chosen[team] = (job, result)
    ordered = sorted(chosen.items(),
                     key=lambda kv: (-ranking_score(kv[1][1], by), kv[1][0].created))
    return [
        Entry(rank=index + 1, team=team, job=job, result=result)
        for index, (team, (job, result)) in enumerate(ordered)
    ]


def _replaces(job: Job, result: JobResult, current: tuple[Job, JobResult], by: str,
              policy: EntryPolicy) -> bool:
    if policy is EntryPolicy.LATEST:
        return (job.finished or 0.0) > (current[0].finished or 0.0)
    return ranking_score(result, by) > ranking_score(current[1], by)
