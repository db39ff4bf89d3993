"""The challenge's phases at work (the definition is challenge.py): what a team may see of its
results and of the leaderboards, the test set's names kept out of what it reads, the baseline
models' entries, the organisers' reruns, and where a queued job stands."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.auth import Principal
from services.core.errors import FailedPrecondition, PermissionDenied
from services.core.jobs import JobState
from services.core.track import EntryPolicy, Phase, Track
from services.scorer.challenge import Challenge, PhaseRule
from services.scorer.jobs import Job, JobSpec
from services.scorer.leaderboard import Entry, leaderboard, standing
from services.scorer.protocol import quality_items, timing_image_path
from services.scorer.store import DailyQuota, JobStore, QueueLimits

# -- what a team sees --------------------------------------------------------------------------


def phase_of(challenge: Challenge | None, job: Job) -> PhaseRule | None:
    """The challenge's rule for the job's phase; None without one (or for a phase the
    definition no longer has: its jobs are treated as an organiser's)."""
    if challenge is None or job.spec.track not in challenge.tracks:
        return None
    for rule in challenge.tracks[job.spec.track].phases:
        if rule.name == job.spec.phase_name:
            return rule
    return None


def check_results_visible(challenge: Challenge | None, principal: Principal, job: Job,
                          crops: bool) -> None:
    """PermissionDenied, saying why, when a team asks for per-image figures (or crops) of a
    phase that shows teams their aggregate results only (or no crops)."""
    rule = phase_of(challenge, job)
    if rule is None or not principal.is_team:
        return
    allowed = rule.results.crops if crops else rule.results.per_image
    if not allowed:
        what = "crops of its images" if crops else "per-image figures"
        raise PermissionDenied(
            f"in track {job.spec.track.value}'s {rule.name} phase teams see "
            f"{_results_words(rule)} only: {what} stay with the organisers, so that the "
            "phase's images stay unknown")


def _results_words(rule: PhaseRule) -> str:
    return {"aggregate": "their aggregate results", "per_image": "their per-image figures",
            "crops": "their per-image figures and crops"}[rule.results.value]


def hides_images(challenge: Challenge | None, principal: Principal, job: Job) -> bool:
    """Whether what this caller reads of the job must not name the phase's images: a team's
    view of a phase whose per-image results it may not see."""
    rule = phase_of(challenge, job)
    return rule is not None and principal.is_team and not rule.results.per_image


def redacted(text: str, dataset: str) -> str:
    """The text without the dataset's folder and file names (an error naming an image)."""
    if not text:
        return text
    text = text.replace(dataset, "<the phase's dataset>")
    pattern = _names_pattern(dataset)
    return pattern.sub("<an image>", text) if pattern is not None else text


@functools.lru_cache(maxsize=16)
def _names_pattern(dataset: str) -> re.Pattern[str] | None:
    names = {path.name for path in Path(dataset).rglob("*") if path.is_file()}
    if not names:
        return None
    # Longest first, so that 10.png is not read as 0.png; whole names only.
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w.-])(?:{alternatives})(?![\w.-])")


@dataclass(frozen=True)
class Board:
    entries: list[Entry]
    scoring: Phase
    policy: EntryPolicy
    hidden: bool  # not yet published: only organisers see it


def board(store: JobStore, challenge: Challenge | None, principal: Principal, track: Track,
          phase: str, by: str, policy: EntryPolicy | None) -> Board:
    """A phase's leaderboard as this caller may see it: one entry per team (the job it
    selected, else the phase's rule, unless the request names a policy), the baselines
    among them. A team asking for a hidden one gets FailedPrecondition."""
    rule = None
    if challenge is not None and track in challenge.tracks:
        rule = challenge.phase(track, phase)
    hidden = rule is not None and not rule.leaderboard_public and not store.published(track,
                                                                                       phase)
    if hidden and principal.is_team:
        raise FailedPrecondition(
            f"track {track.value}'s {phase} leaderboard is hidden until the organisers "
            "publish it")
    chosen = policy or (rule.entry if rule is not None else EntryPolicy.BEST)
    entries = leaderboard(store.list_jobs(track=track), track, phase, by, chosen,
                          store.selections(track, phase))
    scoring = rule.scoring if rule is not None else Phase(phase) if phase in set(Phase) \
        else Phase.VALIDATION
    return Board(entries, scoring, chosen, hidden)


def select(store: JobStore, job: Job) -> Job:
    """The team's choice of the job standing for it in its phase: a succeeded job of its own
    (access.py has checked it is the caller's)."""
    if job.state is not JobState.SUCCEEDED:
        raise FailedPrecondition(f"job {job.job_id} is {job.state.value}: only a succeeded "
                                 "job can stand for its team")
    if job.spec.rerun_of or job.spec.baseline:
        raise FailedPrecondition(f"job {job.job_id} is the organisers': select the team's own "
                                 "submission")
    store.select(job)
    return job


def left_today(store: JobStore, principal: Principal, rule: PhaseRule, track: Track,
               now: dt.datetime) -> int | None:
    """A team's submissions left today in the phase; None for organisers or without a quota."""
    if not principal.is_team or rule.submissions_per_day is None:
        return None
    spec = JobSpec(track=track, phase=rule.scoring, dataset="", model_sha256="",
                   team=principal.name, phase_name=rule.name)
    return store.submissions_left(spec, daily_quota(rule, now))


def daily_quota(rule: PhaseRule, now: dt.datetime) -> DailyQuota:
    assert rule.submissions_per_day is not None
    day = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
    return DailyQuota(rule.submissions_per_day, day.timestamp(),
                      (day + dt.timedelta(days=1)).timestamp(), rule.failed_count)


# -- entries the organisers make -------------------------------------------------------------


def submit_baselines(store: JobStore, challenge: Challenge | None) -> list[Job]:
    """A job per baseline model and phase of each track (once: a request id per model's
    bytes), evaluated like any submission and shown as the leaderboards' baseline rows."""
    if challenge is None:
        return []
    jobs = []
    for rule in challenge.tracks.values():
        for name, path in rule.baselines.items():
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            for phase in rule.phases:
                spec = JobSpec(
                    track=rule.track, phase=phase.scoring, dataset=str(phase.dataset),
                    model_sha256=sha, model_name=path.name, team=name,
                    request_id=f"baseline/{phase.name}/{sha[:16]}", phase_name=phase.name,
                    baseline=True)
                jobs.append(store.create_job(spec, data,
                                             images_total=len(quality_items(rule.track,
                                                                            phase.dataset)))[0])
    return jobs


def rerun_phase(store: JobStore, challenge: Challenge | None, track: Track, phase: str,
                every: bool = False, into: str = "", limits: QueueLimits | None = None
                ) -> list[Job]:
    """New jobs evaluating again, in phase `into` (default: the same), the job standing for
    each team in `phase` (its selection, else the phase's rule), or every succeeded job with
    `every`; each linked to its original. A rerun asked twice makes no second job."""
    target = into or phase
    rule = challenge.phase(track, phase) if challenge is not None else None
    into_rule = challenge.phase(track, target) if challenge is not None else None
    jobs = [job for job in store.list_jobs(track=track)
            if job.spec.phase_name == phase and job.state is JobState.SUCCEEDED
            and not job.spec.rerun_of]
    if not every:
        policy = rule.entry if rule is not None else EntryPolicy.LATEST
        chosen = standing(jobs, track, phase, policy=policy,
                          selections=store.selections(track, phase))
        jobs = list(chosen.values())
    created = []
    for original in sorted(jobs, key=lambda j: j.created):
        spec = original.spec
        dataset = str(into_rule.dataset) if into_rule is not None else spec.dataset
        scoring = into_rule.scoring if into_rule is not None else spec.phase
        images = len(quality_items(track, Path(dataset)))
        timing_image_path(Path(dataset))
        again = JobSpec(
            track=track, phase=scoring, dataset=dataset, model_sha256=spec.model_sha256,
            model_name=spec.model_name, team=spec.team,
            request_id=f"rerun/{target}/{original.job_id}", input_tensor=spec.input_tensor,
            output_tensor=spec.output_tensor, repository_model=spec.repository_model,
            phase_name=target, rerun_of=original.job_id, baseline=spec.baseline)
        created.append(store.create_job(again, None, limits, images_total=images)[0])
    return created


# -- where a queued job stands ---------------------------------------------------------------


@dataclass(frozen=True)
class QueueEstimate:
    position: int  # 1: the next job to start
    start: float  # epoch seconds: when it should start


def queue_estimates(store: JobStore, concurrency: int,
                    now: float | None = None) -> dict[str, QueueEstimate]:
    """Each queued job's place and expected start, from the median duration of recent jobs
    (none yet: a minute each) and the running jobs' elapsed time."""
    now = time.time() if now is None else now
    durations = store.recent_durations()
    typical = statistics.median(durations) if durations else 60.0
    running = store.list_jobs(state=JobState.RUNNING)
    # When each of the `concurrency` runner threads becomes free: a running job's start plus
    # the typical duration (in the past if it runs long: "due now"), never `now` itself, so
    # that a watch of a queued job does not change every second.
    free = sorted([float(round((job.started or now) + typical)) for job in running]
                  + [float(round(now))] * max(0, concurrency - len(running))
                  )[:max(1, concurrency)]
    estimates = {}
    for position, job_id in enumerate(store.queue(), start=1):
        slot = free.pop(0)
        estimates[job_id] = QueueEstimate(position, slot)
        free.append(slot + typical)
        free.sort()
    return estimates
