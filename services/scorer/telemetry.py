"""The scorer's Prometheus metrics: jobs by track and state, the queue, evaluated images (the
throughput operators watch) and the latency of each stage of a job's pipeline.

Recorded in the scorer's one process (jobs run on its threads). Labels are tracks, states and
stage names only, never job ids or image names."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.core.jobs import JobState
from services.core.track import Track
from services.scorer.jobs import Job

TRACKS = tuple(track.value for track in Track)
FINAL_STATES = tuple(state.value for state in JobState if state.final)
# A job's pipeline (evaluation.py): load the model; per image, decode and prepare the pair, run
# the model, measure the figures; then time model and baseline on the HD image.
STAGES = ("load_model", "prepare", "inference", "metrics", "timing")

# This service's metrics, exported by its process only (see services.common.telemetry).
REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_SUBMITTED = Counter(
    "pirm_scorer_jobs_submitted",
    "Jobs accepted (a repeated submission of the same request id is not counted).", ["track"],
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "pirm_scorer_jobs_finished", "Jobs that reached a final state.", ["track", "state"],
    registry=REGISTRY,
)
JOB_DURATION_SECONDS = Histogram(
    "pirm_scorer_job_duration_seconds", "Time from a job's start to its final state.",
    ["track", "state"],
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
    registry=REGISTRY,
)
IMAGES_EVALUATED = Counter(
    "pirm_scorer_images_evaluated", "Images (track A) or patches (track B) scored for jobs.",
    ["track"], registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "pirm_scorer_stage_duration_seconds", "Time of one step of a job's pipeline.",
    ["track", "stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
             300),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("pirm_scorer_queue_depth", "Jobs waiting to run.", registry=REGISTRY)
JOBS_RUNNING = Gauge("pirm_scorer_jobs_running", "Jobs being evaluated now.", registry=REGISTRY)
OLDEST_QUEUED = Gauge(
    "pirm_scorer_oldest_queued_job_age_seconds",
    "How long the oldest queued job has waited (0: none queued): a queue that does not move.",
    registry=REGISTRY)

for _track in TRACKS:  # series exist from the start, so that increase() counts the first event
    JOBS_SUBMITTED.labels(_track)
    IMAGES_EVALUATED.labels(_track)
    for _state in FINAL_STATES:
        JOBS_FINISHED.labels(_track, _state)
        JOB_DURATION_SECONDS.labels(_track, _state)
    for _stage in STAGES:
        STAGE_SECONDS.labels(_track, _stage)


def job_submitted(track: Track) -> None:
    JOBS_SUBMITTED.labels(track.value).inc()


def job_finished(job: Job) -> None:
    """Called with the job as stored once it is final (its start and finish times)."""
    JOBS_FINISHED.labels(job.spec.track.value, job.state.value).inc()
    if job.started is not None and job.finished is not None:
        JOB_DURATION_SECONDS.labels(job.spec.track.value, job.state.value).observe(
            job.finished - job.started)


def image_evaluated(track: Track) -> None:
    IMAGES_EVALUATED.labels(track.value).inc()


@contextlib.contextmanager
def stage(track: Track, name: str) -> Iterator[None]:
    """Times one step of a job (`name` is one of STAGES)."""
    start = time.perf_counter()
    yield
    STAGE_SECONDS.labels(track.value, name).observe(time.perf_counter() - start)


T = TypeVar("T")


def timed_stage(track: Track, name: str, step: Callable[..., T]) -> Callable[..., T]:
    """`step`, timed as a stage wherever it runs (e.g. on a thread pool)."""

    def timed(*args: Any) -> T:
        with stage(track, name):
            return step(*args)

    return timed


class JobCounts(Protocol):
    def count_jobs(self, state: JobState) -> int: ...

    def oldest_queued(self) -> float | None: ...


_watched_lock = threading.Lock()
_watched: list[JobCounts] = []


def watch_store(store: JobCounts) -> Callable[[], None]:
    """Queue depth and running jobs are read from the store when Prometheus scrapes, so they
    are right after a restart too. Returns what stops watching: call it before the store
    closes."""
    with _watched_lock:
        _watched.append(store)

    def unwatch() -> None:
        with _watched_lock:
            _watched.remove(store)

    return unwatch


def _count(state: JobState) -> float:
    with _watched_lock:
        return float(sum(store.count_jobs(state) for store in _watched))


def _oldest_queued_age() -> float:
    with _watched_lock:
        created = [c for store in _watched if (c := store.oldest_queued()) is not None]
    return max(0.0, time.time() - min(created)) if created else 0.0


QUEUE_DEPTH.set_function(lambda: _count(JobState.QUEUED))
OLDEST_QUEUED.set_function(_oldest_queued_age)
JOBS_RUNNING.set_function(lambda: _count(JobState.RUNNING))


# The user study: raters measured and excluded by the organiser's rule, per study (a handful
# of studies per challenge: a small label set), as of the study's last reading.
STUDY_RATERS_MEASURED = Gauge(
    "pirm_study_raters_measured", "Raters of a user study who have answered at least once.",
    ["study"], registry=REGISTRY)
STUDY_RATERS_EXCLUDED = Gauge(
    "pirm_study_raters_excluded", "Raters of a user study excluded by its quality rule.",
    ["study"], registry=REGISTRY)


def study_read(study_id: str, measured: int, excluded: int) -> None:
    STUDY_RATERS_MEASURED.labels(study_id).set(measured)
    STUDY_RATERS_EXCLUDED.labels(study_id).set(excluded)
