"""Leaderboards like the challenge's published tables: one result per team, ranked by score A,
B or C, the baselines as rows of their own. Which result stands for a team in a phase: the one
the team selected, else the phase's rule: its latest (PIRM: the last successful submission)
or its best."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.core.jobs import JobState
from services.core.track import RANKINGS, EntryPolicy, Track
from services.scorer.jobs import Job, JobResult


@dataclass(frozen=True)
class Entry:
    rank: int
    team: str
    job: Job
    result: JobResult

    @property
    def baseline(self) -> bool:
        return self.job.spec.baseline


def ranking_score(result: JobResult, by: str) -> float:
    return float(getattr(result.scores, f"score_{by}"))


def team_of(job: Job) -> str:
    return job.spec.team or job.spec.model_name or job.job_id


def standing(jobs: list[Job], track: Track, phase: str, by: str = "a",
             policy: EntryPolicy = EntryPolicy.BEST,
             selections: Mapping[str, str] | None = None) -> dict[str, Job]:
    """Team -> the succeeded job that stands for it in the track's phase (a final-phase job
    waiting for its MOS included: the user study needs the finalists first)."""
    if by not in RANKINGS:
        raise ValueError(f"rank by one of {RANKINGS}, not {by!r}")
    selections = selections or {}
    chosen: dict[str, Job] = {}
    for job in jobs:
        if (job.state is not JobState.SUCCEEDED or job.result is None
                or job.spec.track is not track or job.spec.phase_name != phase):
            continue
        team = team_of(job)
        current = chosen.get(team)
        if selections.get(team) == job.job_id or (
                current is None or (selections.get(team) != current.job_id
                                    and _replaces(job, current, by, policy))):
            chosen[team] = job
    return chosen


def leaderboard(jobs: list[Job], track: Track, phase: str, by: str = "a",
                policy: EntryPolicy = EntryPolicy.BEST,
                selections: Mapping[str, str] | None = None) -> list[Entry]:
    """The standing jobs that are scored (a final-phase job waiting for its MOS is not ranked
    yet), best score first; ties go to the earlier submission."""
    scored = [(team, job) for team, job in standing(jobs, track, phase, by, policy,
                                                     selections).items()
              if job.result is not None and not job.result.awaiting_mos]
    ordered = sorted(scored, key=lambda tj: (-ranking_score(_result(tj[1]), by),
                                             tj[1].created))
    return [Entry(rank=index + 1, team=team, job=job, result=_result(job))
            for index, (team, job) in enumerate(ordered)]


def _result(job: Job) -> JobResult:
    assert job.result is not None
    return job.result


def _replaces(job: Job, current: Job, by: str, policy: EntryPolicy) -> bool:
    if policy is EntryPolicy.LATEST or _result(current).awaiting_mos:
        return (job.finished or 0.0) > (current.finished or 0.0)
    return ranking_score(_result(job), by) > ranking_score(_result(current), by)
