"""Durable jobs, model bytes and per-image results in SQLite (WAL), SQL only through parameters.

Model bytes are content-addressed by SHA-256 and stored once however often they are submitted.
Per-image results are kept so that a job interrupted by a restart resumes where it stopped, and
so that batch shards can measure a sharded job's images for it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.core.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from services.core.jobs import JobState
from services.core.quality import PairQuality
from services.core.track import Phase, Track
from services.scorer.jobs import SHARDS_STAGE, Job, JobResult, JobSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    sha256 TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    request_id TEXT,
    team TEXT NOT NULL,
    track TEXT NOT NULL,
    phase TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_name TEXT NOT NULL,
    repository_model TEXT NOT NULL,
    mos REAL,
    input_tensor TEXT NOT NULL,
    output_tensor TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    images_done INTEGER NOT NULL DEFAULT 0,
    images_total INTEGER NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    result TEXT,
    sharded INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request ON jobs(team, request_id)
    WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created);
CREATE TABLE IF NOT EXISTS selections (
    team TEXT NOT NULL,
    track TEXT NOT NULL,
    phase_name TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    PRIMARY KEY (team, track, phase_name)
);
CREATE TABLE IF NOT EXISTS publications (
    track TEXT NOT NULL,
    phase_name TEXT NOT NULL,
    published REAL NOT NULL,
    PRIMARY KEY (track, phase_name)
);
CREATE TABLE IF NOT EXISTS image_results (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    image TEXT NOT NULL,
    psnr REAL NOT NULL,
    msssim REAL NOT NULL,
    PRIMARY KEY (job_id, image)
);
"""


# Columns added to the jobs table after its first release, with their declarations.
_ADDED_COLUMNS = {
    "sharded": "INTEGER NOT NULL DEFAULT 0",
    "phase_name": "TEXT NOT NULL DEFAULT ''",
    "rerun_of": "TEXT NOT NULL DEFAULT ''",
    "baseline": "INTEGER NOT NULL DEFAULT 0",
    "failure_kind": "TEXT NOT NULL DEFAULT ''",
    "reported": "REAL",  # a sharded job: when a batch shard last reported images for it
}


@dataclass(frozen=True)
class DailyQuota:
    """A team's submissions to a track's phase per UTC day (the challenge's rule)."""

    limit: int
    day_start: float  # the current UTC day's start, epoch seconds
    day_end: float
    count_failed: bool  # the team's own failed submissions count; the platform's never do

    def refusal(self, team: str, track: Track, phase: str, now: float) -> ResourceExhausted:
        wait = max(1.0, self.day_end - now)
        return ResourceExhausted(
            f"team {team!r} has made its {self.limit} submission"
            f"{'s' if self.limit != 1 else ''} of the day (UTC) to track {track.value}'s "
            f"{phase} phase; the quota resets at 00:00 UTC, in {in_words(wait)}", wait)


def in_words(seconds: float) -> str:
    """A wait as people read it: 3 d 4 h, 5 h 12 min, 7 min."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {rest // 60} min" if hours else f"{max(1, rest // 60)} min"


@dataclass(frozen=True)
class QueueLimits:
    """Admission limits: beyond them a submission is refused with a retry hint."""

    max_queued: int = 1000  # jobs waiting, all teams together
    max_active_per_team: int = 20  # queued + running jobs of one team
    retry_after_s: float = 60.0
    max_images_per_job: int = 10_000  # the challenge's sets: 100 DIV2K images, 350 DPED patches


class SqliteStore:
    """One SQLite file (WAL) behind a lock, with all-or-nothing transactions: the job store's
    and the user study's tables live in the same file, each with its own connection."""

    def __init__(self, path: Path | str, schema: str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(schema)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing; a store that cannot be written (disk full, read-only) raises
        Unavailable saying so, and what the transaction wrote is rolled back."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as error:
                raise _unwritable(error) from error

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JobStore(SqliteStore):
    def __init__(self, path: Path | str) -> None:
        super().__init__(path, _SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, declaration in _ADDED_COLUMNS.items():  # a store made before they existed
            if column not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")

    # -- models --------------------------------------------------------------------------

    def put_model(self, sha256: str, data: bytes) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO models (sha256, data) VALUES (?, ?)", (sha256, data))

    def model_bytes(self, sha256: str) -> bytes:
        with self._lock:
            row = self._db.execute("SELECT data FROM models WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            raise NotFound(f"no stored model with sha256 {sha256}")
        return bytes(row["data"])

    # -- jobs ----------------------------------------------------------------------------

    def create_job(self, spec: JobSpec, model: bytes | None,
                   limits: QueueLimits | None = None, images_total: int = 0,
                   quota: DailyQuota | None = None) -> tuple[Job, bool]:
        """Stores a new job (and its model), or returns the job of the same request id (even
        beyond the limits: it is not a new job). Returns (job, created). A sharded job needs
        its `images_total`: it waits until that many images have been reported."""
        with self._transaction() as db:
            if spec.request_id:
                row = db.execute(
                    "SELECT * FROM jobs WHERE team = ? AND request_id = ?",
                    (spec.team, spec.request_id),
                ).fetchone()
                if row is not None:
                    return _job(row), False
            if limits is not None:
                _admit(db, spec.team, limits)
            if quota is not None:  # in the same transaction: two at once cannot both pass
                used = _submissions_of_the_day(db, spec, quota)
                if used >= quota.limit:
                    raise quota.refusal(spec.team, spec.track, spec.phase_name, time.time())
            if model is not None:
                db.execute(
                    "INSERT OR IGNORE INTO models (sha256, data) VALUES (?, ?)",
                    (spec.model_sha256, model),
                )
            job_id = uuid.uuid4().hex[:12]
            db.execute(
                """INSERT INTO jobs (job_id, request_id, team, track, phase, dataset,
                   model_sha256, model_name, repository_model, mos, input_tensor, output_tensor,
                   state, created, sharded, images_total, stage, phase_name, rerun_of, baseline)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (job_id, spec.request_id, spec.team, spec.track.value, spec.phase.value,
                 spec.dataset, spec.model_sha256, spec.model_name, spec.repository_model,
                 spec.mos, spec.input_tensor, spec.output_tensor, JobState.QUEUED.value,
                 time.time(), spec.sharded, images_total, SHARDS_STAGE if spec.sharded else "",
                 spec.phase_name, spec.rerun_of, spec.baseline),
            )
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _job(row), True

    def get_job(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job with id {job_id!r}")
        return _job(row)

    def list_jobs(self, team: str = "", track: Track | None = None,
                  state: JobState | None = None) -> list[Job]:
        query, params = "SELECT * FROM jobs WHERE 1 = 1", list[object]()
        if team:
            query, params = query + " AND team = ?", [*params, team]
        if track is not None:
            query, params = query + " AND track = ?", [*params, track.value]
        if state is not None:
            query, params = query + " AND state = ?", [*params, state.value]
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created", params).fetchall()
        return [_job(row) for row in rows]

    def next_queued(self) -> Job | None:
        """Claims the oldest queued job: it becomes RUNNING in the same transaction. A sharded
        job is claimed only once its shards have reported every image: its quality stage then
        has nothing left to do, and it is timed and scored like any other."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT job_id FROM jobs WHERE state = ? AND (sharded = 0 OR images_total <= "
                "(SELECT COUNT(*) FROM image_results r WHERE r.job_id = jobs.job_id)) "
                "ORDER BY created LIMIT 1",
                (JobState.QUEUED.value,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, started = COALESCE(started, ?) WHERE job_id = ?",
                (JobState.RUNNING.value, time.time(), row["job_id"]),
            )
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (row["job_id"],)).fetchone()
        return _job(row)

    def requeue_running(self) -> int:
        """After a restart: jobs that were RUNNING go back to the queue (their scored images are
        kept and not recomputed)."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ? WHERE state = ?",
                (JobState.QUEUED.value, JobState.RUNNING.value),
            )
            return cursor.rowcount

    def cancel(self, job_id: str) -> Job:
        """A queued or running job becomes CANCELLED (its runner notices and stops); a finished
        job is returned as it is."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished = ?, stage = '' "
                "WHERE job_id = ? AND state IN (?, ?)",
                (JobState.CANCELLED.value, time.time(), job_id, JobState.QUEUED.value,
                 JobState.RUNNING.value),
            )
        return self.get_job(job_id)

    def rescore(self, job_id: str, mos: float, result: JobResult) -> Job:
        """Records a MOS set after the job finished, with the result scored again."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET mos = ?, result = ? WHERE job_id = ? AND state = ?",
                (mos, result.to_json(), job_id, JobState.SUCCEEDED.value),
            )
            if cursor.rowcount != 1:
                raise FailedPrecondition(f"job {job_id} has not succeeded: no result to rescore")
        return self.get_job(job_id)

    def unfinished_models(self) -> set[str]:
        """The SHA-256 of every queued or running job's model."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT model_sha256 FROM jobs WHERE state IN (?, ?)",
                (JobState.QUEUED.value, JobState.RUNNING.value)).fetchall()
        return {row[0] for row in rows}

    def oldest_queued(self) -> float | None:
        """When the oldest queued job was submitted (epoch seconds); None: none queued."""
        with self._lock:
            row = self._db.execute("SELECT MIN(created) FROM jobs WHERE state = ?",
                                   (JobState.QUEUED.value,)).fetchone()
        return None if row[0] is None else float(row[0])

    def count_jobs(self, state: JobState) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?",
                                   (state.value,)).fetchone()
        return int(row[0])

    def set_progress(self, job_id: str, done: int, total: int, stage: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET images_done = ?, images_total = ?, stage = ? WHERE job_id = ?",
                (done, total, stage, job_id),
            )

    def finish(
        self, job_id: str, state: JobState, result: JobResult | None = None, error: str = "",
        from_state: JobState = JobState.RUNNING, failure_kind: str = "",
    ) -> bool:
        """A running job's final state (a sharded job fails from QUEUED, while it waits for
        its shards); False if it was no longer in `from_state` (cancelled meanwhile, failed by
        another shard), in which case nothing changes. A failure is the model's own
        ("model") or the platform's ("platform")."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, finished = ?, stage = ?, "
                "failure_kind = ? WHERE job_id = ? AND state = ?",
                (state.value, result.to_json() if result else None, error, time.time(), "",
                 failure_kind, job_id, from_state.value),
            )
            return cursor.rowcount == 1

    def fail_silent_shards(self, silence_s: float, now: float | None = None) -> list[str]:
        """Fails, as the platform's failure, each sharded job still waiting for images that no
        batch shard has reported to for `silence_s` (since it was submitted, if none ever
        did): its shards have died or were never started. A job with every image in waits for
        a runner, not for shards, and stays. Returns their ids."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            rows = db.execute(
                "SELECT job_id, images_done, images_total FROM jobs WHERE state = ? AND "
                "sharded = 1 AND images_done < images_total AND COALESCE(reported, created) < ?",
                (JobState.QUEUED.value, now - silence_s)).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE jobs SET state = ?, error = ?, finished = ?, stage = '', "
                    "failure_kind = 'platform' WHERE job_id = ? AND state = ?",
                    (JobState.FAILED.value,
                     f"no batch shard reported images for {silence_s:.0f} s "
                     f"({row['images_done']}/{row['images_total']} in): its shards stopped or "
                     "never started; this failure does not count against a quota, submit the "
                     "batch again", now, row["job_id"], JobState.QUEUED.value))
        return [str(row["job_id"]) for row in rows]

    def submissions_left(self, spec: JobSpec, quota: DailyQuota) -> int:
        with self._lock:
            return max(0, quota.limit - _submissions_of_the_day(self._db, spec, quota))

    # -- the challenge's leaderboards ------------------------------------------------------

    def select(self, job: Job) -> None:
        """`job` stands for its team in its phase from now on."""
        spec = job.spec
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO selections (team, track, phase_name, job_id) "
                       "VALUES (?, ?, ?, ?)", (spec.team, spec.track.value, spec.phase_name,
                                               job.job_id))

    def selections(self, track: Track, phase_name: str) -> dict[str, str]:
        """team -> the job it selected in the phase."""
        with self._lock:
            rows = self._db.execute(
                "SELECT team, job_id FROM selections WHERE track = ? AND phase_name = ?",
                (track.value, phase_name)).fetchall()
        return {row["team"]: row["job_id"] for row in rows}

    def publish(self, track: Track, phase_name: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO publications (track, phase_name, published) "
                       "VALUES (?, ?, ?)", (track.value, phase_name, time.time()))

    def published(self, track: Track, phase_name: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM publications WHERE track = ? AND phase_name = ?",
                (track.value, phase_name)).fetchone()
        return row is not None

    def queue(self) -> list[str]:
        """The queued jobs' ids in the order they will be claimed."""
        with self._lock:
            rows = self._db.execute("SELECT job_id FROM jobs WHERE state = ? ORDER BY created",
                                    (JobState.QUEUED.value,)).fetchall()
        return [row["job_id"] for row in rows]

    def recent_durations(self, count: int = 20) -> list[float]:
        """How long the last `count` succeeded jobs ran, in seconds, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT finished - started FROM jobs WHERE state = ? AND started IS NOT NULL "
                "AND finished IS NOT NULL ORDER BY finished DESC LIMIT ?",
                (JobState.SUCCEEDED.value, count)).fetchall()
        return [float(row[0]) for row in rows]

    # -- per-image results ---------------------------------------------------------------

    def put_image_result(self, job_id: str, image: str, psnr: float, msssim: float) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO image_results (job_id, image, psnr, msssim) "
                "VALUES (?, ?, ?, ?)",
                (job_id, image, psnr, msssim),
            )

    def put_shard_results(self, job_id: str, results: dict[str, PairQuality]) -> Job:
        """Stores figures reported by batch shards for a job that is not finished, and counts
        its images done.

        INSERT OR IGNORE, not REPLACE: an image reported twice (a shard retried, or run again)
        keeps its first figures. A retry measures the same figures anyway, and this way what
        was counted, and what the timing and scoring stages of a complete job read, never
        changes under them."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            if JobState(row["state"]).final:
                raise FailedPrecondition(
                    f"job {job_id} is {row['state']}: it takes no more results; a shard "
                    "that reports to it was started after the job had finished or was cancelled")
            db.executemany(
                "INSERT OR IGNORE INTO image_results (job_id, image, psnr, msssim) "
                "VALUES (?, ?, ?, ?)",
                [(job_id, image, q.psnr, q.msssim) for image, q in results.items()],
            )
            # While the job runs (timing, scoring), its evaluation owns the progress.
            db.execute(
                "UPDATE jobs SET images_done = (SELECT COUNT(*) FROM image_results r "
                "WHERE r.job_id = jobs.job_id) WHERE job_id = ? AND state = ?",
                (job_id, JobState.QUEUED.value),
            )
            db.execute("UPDATE jobs SET reported = ? WHERE job_id = ?", (time.time(), job_id))
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _job(row)

    def image_results(self, job_id: str) -> dict[str, tuple[float, float]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT image, psnr, msssim FROM image_results WHERE job_id = ?", (job_id,)
            ).fetchall()
        return {row["image"]: (row["psnr"], row["msssim"]) for row in rows}


def _unwritable(error: sqlite3.OperationalError) -> Unavailable:
    text = str(error)
    if "full" in text:
        reason = "its disk is full"
    elif "readonly" in text or "read-only" in text:
        reason = "it is read-only"
    else:
        reason = text
    return Unavailable(f"the scorer cannot write its job store ({reason}); nothing was stored. "
                       "Retry later; operators: free disk space or fix the store's volume")


def _admit(db: sqlite3.Connection, team: str, limits: QueueLimits) -> None:
    queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?",
                        (JobState.QUEUED.value,)).fetchone()[0]
    if queued >= limits.max_queued:
        raise ResourceExhausted(
            f"the queue is full ({queued} jobs waiting, limit {limits.max_queued}); "
            f"retry in {limits.retry_after_s:.0f} s", limits.retry_after_s)
    active = db.execute(
        "SELECT COUNT(*) FROM jobs WHERE team = ? AND state IN (?, ?)",
        (team, JobState.QUEUED.value, JobState.RUNNING.value),
    ).fetchone()[0]
    if active >= limits.max_active_per_team:
        raise ResourceExhausted(
            f"team {team!r} has {active} jobs queued or running (limit "
            f"{limits.max_active_per_team}); retry when one has finished, in about "
            f"{limits.retry_after_s:.0f} s", limits.retry_after_s)


def _submissions_of_the_day(db: sqlite3.Connection, spec: JobSpec, quota: DailyQuota) -> int:
    """The team's submissions to the track's phase since the UTC day began: queued, running
    and succeeded ones; its own failures if they count; never the platform's failures, a
    cancelled job, a rerun or a baseline's job (the organisers made those)."""
    failed = "OR (state = 'FAILED' AND failure_kind != 'platform')" if quota.count_failed else ""
    row = db.execute(
        "SELECT COUNT(*) FROM jobs WHERE team = ? AND track = ? AND phase_name = ? "
        "AND created >= ? AND rerun_of = '' AND baseline = 0 "
        f"AND (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED') {failed})",
        (spec.team, spec.track.value, spec.phase_name, quota.day_start)).fetchone()
    return int(row[0])


def _job(row: sqlite3.Row) -> Job:
    spec = JobSpec(
        track=Track(row["track"]),
        phase=Phase(row["phase"]),
        dataset=row["dataset"],
        model_sha256=row["model_sha256"],
        model_name=row["model_name"],
        team=row["team"],
        request_id=row["request_id"] or "",
        mos=row["mos"],
        input_tensor=row["input_tensor"],
        output_tensor=row["output_tensor"],
        repository_model=row["repository_model"],
        sharded=bool(row["sharded"]),
        phase_name=row["phase_name"],
        rerun_of=row["rerun_of"],
        baseline=bool(row["baseline"]),
    )
    return Job(
        job_id=row["job_id"],
        spec=spec,
        state=JobState(row["state"]),
        error=row["error"],
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
        images_done=row["images_done"],
        images_total=row["images_total"],
        stage=row["stage"],
        result=JobResult.from_json(row["result"]) if row["result"] else None,
        failure_kind=row["failure_kind"],
    )
