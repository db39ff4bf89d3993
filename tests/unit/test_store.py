"""services.scorer.store.JobStore on a real SQLite file, and services.scorer.leaderboard."""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from services.core.errors import FailedPrecondition, NotFound, ResourceExhausted
from services.core.jobs import JobState
from services.core.quality import PairQuality
from services.core.timing import DeviceTiming, Timing
from services.core.track import EntryPolicy, Phase, Track
from services.scorer.jobs import Job, JobResult, JobSpec
from services.scorer.leaderboard import Entry, leaderboard
from services.scorer.scoring import ScoreConstants, Scores
from services.scorer.store import _SCHEMA, JobStore, QueueLimits

MODEL_1 = b"\x0a\x05input" + bytes(range(256)) * 4
MODEL_2 = b"\x0a\x06output" + bytes(reversed(range(256))) * 3


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec(team: str = "team-1", request_id: str = "", model: bytes = MODEL_1,
         track: Track = Track.A, phase: Phase = Phase.VALIDATION, mos: float | None = None,
         repository_model: str = "") -> JobSpec:
    return JobSpec(track=track, phase=phase, dataset="/data/div2k", model_sha256=sha(model),
                   model_name="srcnn-small", team=team, request_id=request_id, mos=mos,
                   input_tensor="input:0", output_tensor="output:0",
                   repository_model=repository_model)


def count_rows(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def make_timing(median: float) -> DeviceTiming:
    return DeviceTiming(
        timing=Timing(median_ms=median, p90_ms=median * 1.1, min_ms=median * 0.9,
                      max_ms=median * 1.3, mean_ms=median * 1.02, stdev_ms=0.125, runs=25,
                      ci95_low_ms=median * 0.95, ci95_high_ms=median * 1.05, warmup_runs=3),
        device="CPU:0", intra_op_threads=2, inter_op_threads=1, node="node-a",
        input_shape=(1, 720, 1280, 3),
    )


def make_result(a: float, b: float, c: float, mos: float | None = None) -> JobResult:
    return JobResult(
        psnr=27.123456789, msssim=0.951234567, mos=mos, runtime=make_timing(812.5),
        baseline_runtime=make_timing(3239.0), scores=Scores(score_a=a, score_b=b, score_c=c),
        constants=ScoreConstants(psnr_base=26.5, ssim_base=0.94, kappa=0.0, mos_ref=0.0,
                                 speed_cap=4.0),
        images=100, software="pirm-eval 0.1.0 / tensorflow 2.21.0",
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.sqlite"  # parent created by the store


@pytest.fixture
def store(db_path: Path) -> Iterator[JobStore]:
    s = JobStore(db_path)
    yield s
    s.close()


def create(store: JobStore, job_spec: JobSpec, model: bytes | None = MODEL_1) -> Job:
    job, created = store.create_job(job_spec, model)
    assert created
    time.sleep(0.002)  # distinct creation times for the ordering checks
    return job


# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------


def test_wal_mode(store: JobStore, db_path: Path) -> None:
    assert db_path.is_file()
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


def test_create_and_get(store: JobStore) -> None:
    s = spec(mos=3.25)
    before = time.time()
    job = create(store, s)
    assert job.spec == s
    assert job.state is JobState.QUEUED
    assert job.error == ""
    assert before - 1 <= job.created <= time.time() + 1
    assert job.started is None and job.finished is None and job.result is None
    again = store.get_job(job.job_id)
    assert again == job
    assert again.spec.mos == 3.25


def test_list_jobs_filters_and_orders(store: JobStore) -> None:
    j1 = create(store, spec(team="x"))
    j2 = create(store, spec(team="y", track=Track.B))
    j3 = create(store, spec(team="x", track=Track.B))
    assert [j.job_id for j in store.list_jobs()] == [j1.job_id, j2.job_id, j3.job_id]
    assert [j.job_id for j in store.list_jobs(team="x")] == [j1.job_id, j3.job_id]
    assert [j.job_id for j in store.list_jobs(track=Track.B)] == [j2.job_id, j3.job_id]
    assert [j.job_id for j in store.list_jobs(team="x", track=Track.A)] == [j1.job_id]
    assert store.list_jobs(team="nobody") == []


def test_request_id_is_idempotent(store: JobStore, db_path: Path) -> None:
    first, created = store.create_job(spec(team="t", request_id="req-1"), MODEL_1)
    assert created
    second, created = store.create_job(spec(team="t", request_id="req-1", model=MODEL_2),
                                       MODEL_2)
    assert not created
    assert second.job_id == first.job_id
    assert second.spec.model_sha256 == sha(MODEL_1)
    assert count_rows(db_path, "jobs") == 1
    assert count_rows(db_path, "models") == 1  # the repeated request stored nothing
    # the same request id from another team is another job
    other, created = store.create_job(spec(team="u", request_id="req-1"), MODEL_1)
    assert created and other.job_id != first.job_id
    # no request id: every call is a new job
    a, created_a = store.create_job(spec(team="t"), MODEL_1)
    b, created_b = store.create_job(spec(team="t"), MODEL_1)
    assert created_a and created_b and a.job_id != b.job_id
    assert count_rows(db_path, "jobs") == 4


def test_model_bytes_stored_once(store: JobStore, db_path: Path) -> None:
    for team in ("a", "b", "c"):
        create(store, spec(team=team), MODEL_1)
    create(store, spec(team="d", model=MODEL_2), MODEL_2)
    store.put_model(sha(MODEL_1), MODEL_1)
    assert count_rows(db_path, "models") == 2
    assert count_rows(db_path, "jobs") == 4
    with closing(sqlite3.connect(db_path)) as db:
        rows = dict(db.execute("SELECT sha256, data FROM models").fetchall())
    assert rows == {sha(MODEL_1): MODEL_1, sha(MODEL_2): MODEL_2}
    assert store.model_bytes(sha(MODEL_1)) == MODEL_1
    assert store.model_bytes(sha(MODEL_2)) == MODEL_2


def test_job_without_model_bytes(store: JobStore, db_path: Path) -> None:
    job = create(store, spec(repository_model="srcnn/3"), None)
    assert store.get_job(job.job_id).spec.repository_model == "srcnn/3"
    assert count_rows(db_path, "models") == 0


def test_next_queued_claims_oldest(store: JobStore) -> None:
    assert store.next_queued() is None
    j1 = create(store, spec(team="a"))
    j2 = create(store, spec(team="b"))
    j3 = create(store, spec(team="c"))
    claimed = store.next_queued()
    assert claimed is not None
    assert claimed.job_id == j1.job_id
    assert claimed.state is JobState.RUNNING
    assert claimed.started is not None
    assert store.get_job(j1.job_id).state is JobState.RUNNING
    second = store.next_queued()
    assert second is not None and second.job_id == j2.job_id
    third = store.next_queued()
    assert third is not None and third.job_id == j3.job_id
    assert store.next_queued() is None
    assert {j.state for j in store.list_jobs()} == {JobState.RUNNING}


def test_requeue_running(store: JobStore) -> None:
    j1 = create(store, spec(team="a"))
    j2 = create(store, spec(team="b"))
    j3 = create(store, spec(team="c"))
    claimed = [store.next_queued(), store.next_queued()]
    assert [j.job_id for j in claimed if j] == [j1.job_id, j2.job_id]
    store.finish(j2.job_id, JobState.FAILED, error="model crashed")
    assert store.requeue_running() == 1
    assert store.get_job(j1.job_id).state is JobState.QUEUED
    assert store.get_job(j2.job_id).state is JobState.FAILED
    assert store.get_job(j3.job_id).state is JobState.QUEUED
    assert store.requeue_running() == 0
    again = store.next_queued()
    assert again is not None and again.job_id == j1.job_id


def test_set_progress(store: JobStore) -> None:
    job = create(store, spec())
    store.set_progress(job.job_id, 3, 100, "quality")
    got = store.get_job(job.job_id)
    assert (got.images_done, got.images_total, got.stage) == (3, 100, "quality")


def test_image_results_survive_reopening(db_path: Path) -> None:
    first = JobStore(db_path)
    job = create(first, spec())
    first.put_image_result(job.job_id, "0801.png", 28.25, 0.9612345678901234)
    first.put_image_result(job.job_id, "0802.png", 25.5, 0.9)
    first.put_image_result(job.job_id, "0802.png", 25.75, 0.91)  # rescored: replaced
    first.close()
    second = JobStore(db_path)
    try:
        assert second.image_results(job.job_id) == {
            "0801.png": (28.25, 0.9612345678901234),
            "0802.png": (25.75, 0.91),
        }
        assert second.get_job(job.job_id).spec == job.spec
        assert second.image_results("unknown") == {}
    finally:
        second.close()
    assert count_rows(db_path, "image_results") == 2


def test_finish_round_trips_result(store: JobStore, db_path: Path) -> None:
    job = create(store, spec())
    store.next_queued()
    result = make_result(12.5, -3.25, 7.0 / 3.0, mos=None)
    store.finish(job.job_id, JobState.SUCCEEDED, result)
    got = store.get_job(job.job_id)
    assert got.state is JobState.SUCCEEDED
    assert got.error == ""
    assert got.finished is not None and got.started is not None
    assert got.finished >= got.started
    assert got.result == result
    assert got.result is not None
    assert got.result.runtime.input_shape == (1, 720, 1280, 3)
    assert isinstance(got.result.runtime.timing, Timing)
    store.close()
    reopened = JobStore(db_path)
    try:
        assert reopened.get_job(job.job_id).result == result
    finally:
        reopened.close()


def test_finish_with_mos_and_error(store: JobStore) -> None:
    ok = create(store, spec(phase=Phase.FINAL, mos=3.5))
    bad = create(store, spec())
    store.next_queued(), store.next_queued()
    result = make_result(1.0, 2.0, 3.0, mos=3.5)
    store.finish(ok.job_id, JobState.SUCCEEDED, result)
    assert store.get_job(ok.job_id).result == result
    store.finish(bad.job_id, JobState.FAILED, error="no node 'input'")
    got = store.get_job(bad.job_id)
    assert got.state is JobState.FAILED
    assert got.error == "no node 'input'"
    assert got.result is None


def test_unknown_ids_are_not_found(store: JobStore) -> None:
    create(store, spec())
    with pytest.raises(NotFound):
        store.get_job("doesnotexist")
    with pytest.raises(NotFound):
        store.model_bytes(sha(b"never stored"))


def test_hostile_strings_are_data(store: JobStore) -> None:
    team = "x'; DROP TABLE jobs; --"
    job = create(store, spec(team=team, request_id="r' OR '1'='1"))
    assert store.get_job(job.job_id).spec.team == team
    assert [j.job_id for j in store.list_jobs(team=team)] == [job.job_id]
    assert store.list_jobs(team="' OR '1'='1") == []


# --------------------------------------------------------------------------------------------
# leaderboard
# --------------------------------------------------------------------------------------------


def done(job_id: str, team: str, scores: tuple[float, float, float], created: float,
         track: Track = Track.A, phase: Phase = Phase.VALIDATION,
         state: JobState = JobState.SUCCEEDED, model_name: str = "m") -> Job:
    return Job(
        job_id=job_id,
        spec=JobSpec(track=track, phase=phase, dataset="d", model_sha256="0" * 64,
                     model_name=model_name, team=team),
        state=state,
        created=created,
        result=make_result(*scores),
    )


@pytest.fixture
def jobs() -> list[Job]:
    return [
        done("j1", "alpha", (10.0, 5.0, 1.0), 1.0),
        done("j2", "alpha", (8.0, 9.0, 2.0), 2.0),
        done("j3", "beta", (9.0, 7.0, 6.0), 3.0),
        done("j4", "gamma", (12.0, 1.0, 0.5), 4.0),
        # not counted: other states, track, phase
        done("j5", "beta", (99.0, 99.0, 99.0), 5.0, state=JobState.FAILED),
        done("j6", "delta", (50.0, 50.0, 50.0), 6.0, state=JobState.RUNNING),
        done("j7", "delta", (60.0, 60.0, 60.0), 7.0, track=Track.B),
        done("j8", "epsilon", (70.0, 70.0, 70.0), 8.0, phase=Phase.FINAL),
        done("j9", "zeta", (80.0, 80.0, 80.0), 9.0, state=JobState.CANCELLED),
        done("j10", "eta", (90.0, 90.0, 90.0), 10.0, state=JobState.QUEUED),
    ]


def table(entries: list[Entry], by: str) -> list[tuple[int, str, str, float]]:
    return [(e.rank, e.team, e.job.job_id, getattr(e.result.scores, f"score_{by}"))
            for e in entries]


def test_leaderboard_by_a(jobs: list[Job]) -> None:
    assert table(leaderboard(jobs, Track.A, Phase.VALIDATION, "a"), "a") == [
        (1, "gamma", "j4", 12.0), (2, "alpha", "j1", 10.0), (3, "beta", "j3", 9.0),
    ]


def test_leaderboard_by_b(jobs: list[Job]) -> None:
    assert table(leaderboard(jobs, Track.A, Phase.VALIDATION, "b"), "b") == [
        (1, "alpha", "j2", 9.0), (2, "beta", "j3", 7.0), (3, "gamma", "j4", 1.0),
    ]


def test_leaderboard_by_c(jobs: list[Job]) -> None:
    assert table(leaderboard(jobs, Track.A, Phase.VALIDATION, "c"), "c") == [
        (1, "beta", "j3", 6.0), (2, "alpha", "j2", 2.0), (3, "gamma", "j4", 0.5),
    ]


def test_leaderboard_default_is_a(jobs: list[Job]) -> None:
    assert table(leaderboard(jobs, Track.A, Phase.VALIDATION), "a") == table(
        leaderboard(jobs, Track.A, Phase.VALIDATION, "a"), "a")


def test_leaderboard_other_track_and_phase(jobs: list[Job]) -> None:
    assert table(leaderboard(jobs, Track.B, Phase.VALIDATION, "a"), "a") == [
        (1, "delta", "j7", 60.0)]
    assert table(leaderboard(jobs, Track.A, Phase.FINAL, "c"), "c") == [
        (1, "epsilon", "j8", 70.0)]
    assert leaderboard(jobs, Track.B, Phase.FINAL, "b") == []
    assert leaderboard([], Track.A, Phase.VALIDATION) == []


def test_leaderboard_ties_go_to_the_earlier_job() -> None:
    board = leaderboard(
        [done("late", "x", (5.0, 0.0, 0.0), 20.0), done("early", "y", (5.0, 0.0, 0.0), 10.0)],
        Track.A, Phase.VALIDATION, "a",
    )
    assert [(e.rank, e.team) for e in board] == [(1, "y"), (2, "x")]


def test_leaderboard_succeeded_job_without_result_is_skipped() -> None:
    job = done("j", "x", (5.0, 5.0, 5.0), 1.0)
    job.result = None
    assert leaderboard([job], Track.A, Phase.VALIDATION) == []


def test_leaderboard_rejects_unknown_ranking(jobs: list[Job]) -> None:
    with pytest.raises(ValueError):
        leaderboard(jobs, Track.A, Phase.VALIDATION, "d")


def test_leaderboard_from_store(store: JobStore) -> None:
    """Jobs finished through the store rank like the in-memory ones."""
    results = {"a": (3.0, 1.0, 1.0), "b": (4.0, 1.0, 1.0), "c": (2.0, 9.0, 1.0)}
    for team, scores in results.items():
        job = create(store, spec(team=team))
        store.next_queued()
        store.finish(job.job_id, JobState.SUCCEEDED, make_result(*scores))
    create(store, spec(team="queued"))
    board = leaderboard(store.list_jobs(), Track.A, Phase.VALIDATION, "a")
    assert [(e.rank, e.team) for e in board] == [(1, "b"), (2, "a"), (3, "c")]
    board = leaderboard(store.list_jobs(), Track.A, Phase.VALIDATION, "b")
    assert [e.team for e in board][0] == "c"


# --------------------------------------------------------------------------------------------
# cancel, rescore, admission limits, entry policy
# --------------------------------------------------------------------------------------------


def test_cancel_queued_and_running_but_not_finished(store: JobStore) -> None:
    create(store, spec(team="a"))
    running = create(store, spec(team="b"))
    done = create(store, spec(team="c"))
    for _ in range(3):
        store.next_queued()
    store.finish(done.job_id, JobState.SUCCEEDED, make_result(1.0, 1.0, 1.0))
    assert store.cancel(running.job_id).state is JobState.CANCELLED
    assert store.cancel(done.job_id).state is JobState.SUCCEEDED
    fresh = create(store, spec(team="d"))
    cancelled = store.cancel(fresh.job_id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished is not None
    assert store.next_queued() is None  # a cancelled job is never claimed
    # The runner's late result for a cancelled job is dropped, not stored over the cancel.
    assert store.finish(running.job_id, JobState.SUCCEEDED, make_result(9.0, 9.0, 9.0)) is False
    assert store.get_job(running.job_id).state is JobState.CANCELLED
    assert store.get_job(running.job_id).result is None
    assert store.requeue_running() == 1  # only job a was still running


def test_rescore_needs_a_succeeded_job(store: JobStore) -> None:
    job = create(store, spec(phase=Phase.FINAL))
    with pytest.raises(FailedPrecondition):
        store.rescore(job.job_id, 3.0, make_result(1.0, 2.0, 3.0, mos=3.0))
    store.next_queued()
    store.finish(job.job_id, JobState.SUCCEEDED, make_result(math.nan, math.nan, math.nan))
    assert store.get_job(job.job_id).result.awaiting_mos  # type: ignore[union-attr]
    updated = store.rescore(job.job_id, 3.0, make_result(1.0, 2.0, 3.0, mos=3.0))
    assert updated.spec.mos == 3.0
    assert updated.result == make_result(1.0, 2.0, 3.0, mos=3.0)


def test_admission_limits(store: JobStore) -> None:
    limits = QueueLimits(max_queued=3, max_active_per_team=2, retry_after_s=30.0)
    store.create_job(spec(team="a", request_id="1"), MODEL_1, limits)
    store.create_job(spec(team="a", request_id="2"), MODEL_1, limits)
    with pytest.raises(ResourceExhausted, match="team 'a' has 2 jobs") as refused:
        store.create_job(spec(team="a", request_id="3"), MODEL_1, limits)
    assert refused.value.metadata() == (("retry-after-s", "30"),)
    # A retried submission returns its job even at the limit: it is not a new job.
    again, created = store.create_job(spec(team="a", request_id="2"), MODEL_1, limits)
    assert not created and again.spec.request_id == "2"
    store.create_job(spec(team="b"), MODEL_1, limits)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        store.create_job(spec(team="c"), MODEL_1, limits)
    store.next_queued()  # a running job of team a still counts for the team, not the queue
    with pytest.raises(ResourceExhausted, match="team 'a'"):
        store.create_job(spec(team="a"), MODEL_1, limits)
    store.create_job(spec(team="c"), MODEL_1, limits)
    assert len(store.list_jobs()) == 4


def test_leaderboard_latest_policy_and_unscored_final_jobs(store: JobStore) -> None:
    for team, scores in (("a", (5.0, 1.0, 1.0)), ("a", (2.0, 1.0, 1.0)), ("b", (3.0, 1.0, 1.0))):
        job = create(store, spec(team=team))
        store.next_queued()
        store.finish(job.job_id, JobState.SUCCEEDED, make_result(*scores))
        time.sleep(0.002)
    waiting = create(store, spec(team="c", phase=Phase.FINAL))
    store.next_queued()
    store.finish(waiting.job_id, JobState.SUCCEEDED, make_result(math.nan, math.nan, math.nan))
    best = leaderboard(store.list_jobs(), Track.A, Phase.VALIDATION, "a", EntryPolicy.BEST)
    assert [(e.team, e.result.scores.score_a) for e in best] == [("a", 5.0), ("b", 3.0)]
    latest = leaderboard(store.list_jobs(), Track.A, Phase.VALIDATION, "a", EntryPolicy.LATEST)
    assert [(e.team, e.result.scores.score_a) for e in latest] == [("b", 3.0), ("a", 2.0)]
    assert leaderboard(store.list_jobs(), Track.A, Phase.FINAL, "a") == []


# --------------------------------------------------------------------------------------------
# sharded jobs
# --------------------------------------------------------------------------------------------


def test_sharded_job_is_claimed_once_every_image_is_reported(store: JobStore) -> None:
    sharded, _ = store.create_job(replace(spec(team="a"), sharded=True), MODEL_1, images_total=3)
    time.sleep(0.002)
    normal = create(store, spec(team="b"))
    assert (sharded.stage, sharded.images_total, sharded.spec.sharded) == ("shards", 3, True)
    claimed = store.next_queued()  # the older sharded job waits for its shards
    assert claimed is not None and claimed.job_id == normal.job_id
    store.put_shard_results(sharded.job_id, {"1.jpg": PairQuality(21.5, 0.9),
                                             "2.jpg": PairQuality(22.0, 0.91)})
    assert store.next_queued() is None
    job = store.put_shard_results(sharded.job_id, {"2.jpg": PairQuality(99.0, 0.0),
                                                   "3.jpg": PairQuality(math.inf, 1.0)})
    assert (job.images_done, job.state) == (3, JobState.QUEUED)
    # An image reported twice keeps its first figures.
    assert store.image_results(sharded.job_id)["2.jpg"] == (22.0, 0.91)
    claimed = store.next_queued()
    assert claimed is not None and claimed.job_id == sharded.job_id


def test_shard_results_refused_once_the_job_has_finished(store: JobStore) -> None:
    job, _ = store.create_job(replace(spec(), sharded=True), MODEL_1, images_total=1)
    store.cancel(job.job_id)
    with pytest.raises(FailedPrecondition, match="CANCELLED"):
        store.put_shard_results(job.job_id, {"1.jpg": PairQuality(21.5, 0.9)})
    with pytest.raises(NotFound):
        store.put_shard_results("unknown", {"1.jpg": PairQuality(21.5, 0.9)})
    assert store.image_results(job.job_id) == {}


def test_a_store_made_before_sharded_jobs_gets_the_column(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    before = _SCHEMA.replace(",\n    sharded INTEGER NOT NULL DEFAULT 0", "")
    assert "sharded" not in before
    with closing(sqlite3.connect(db_path)) as db:
        db.executescript(before)
    old = JobStore(db_path)
    try:
        job = create(old, spec())
        assert not old.get_job(job.job_id).spec.sharded
    finally:
        old.close()


def test_the_oldest_queued_jobs_wait_is_exported_from_the_store(store: JobStore) -> None:
    from services.scorer.telemetry import REGISTRY, watch_store

    def age() -> float:
        value = REGISTRY.get_sample_value("pirm_scorer_oldest_queued_job_age_seconds")
        assert value is not None
        return value

    unwatch = watch_store(store)
    try:
        assert store.oldest_queued() is None and age() == 0.0
        before = time.time()
        first = create(store, spec(team="a"))
        create(store, spec(team="b"))
        assert store.oldest_queued() == first.created
        time.sleep(0.05)
        assert 0.05 <= age() <= time.time() - before
        claimed = [store.next_queued(), store.next_queued()]
        assert all(claimed) and store.oldest_queued() is None and age() == 0.0
    finally:
        unwatch()
