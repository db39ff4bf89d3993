"""User studies in SQLite (the scorer's store file, tables of their own): the study, its
methods and images, raters with their tokens, each rater's tasks, and the ratings.

A rating is keyed by (rater, task): INSERT OR IGNORE, so a reload, a double click or a retried
request never records a second one (the first answer stands)."""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from services.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.core.track import Track
from services.scorer.store import SqliteStore
from services.scorer.study import Answer, QualityRule, StudyDesign, Task, TaskKind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_id TEXT PRIMARY KEY,
    track TEXT NOT NULL,
    phase_name TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    closed REAL,
    seed INTEGER NOT NULL,
    ratings_per_pair INTEGER NOT NULL,
    max_control_failures INTEGER NOT NULL,
    max_repeat_gap INTEGER NOT NULL,
    max_inconsistent_repeats INTEGER NOT NULL,
    min_median_seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_methods (
    study_id TEXT NOT NULL REFERENCES studies(study_id),
    method INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    team TEXT NOT NULL,
    baseline INTEGER NOT NULL,
    PRIMARY KEY (study_id, method)
);
CREATE TABLE IF NOT EXISTS study_images (
    study_id TEXT NOT NULL REFERENCES studies(study_id),
    image INTEGER NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (study_id, image)
);
CREATE TABLE IF NOT EXISTS study_raters (
    study_id TEXT NOT NULL REFERENCES studies(study_id),
    rater INTEGER NOT NULL,
    token TEXT NOT NULL UNIQUE,
    completion_code TEXT NOT NULL,
    worker_id TEXT NOT NULL DEFAULT '',
    assignment_id TEXT NOT NULL DEFAULT '',
    first_seen REAL,
    PRIMARY KEY (study_id, rater)
);
CREATE TABLE IF NOT EXISTS study_tasks (
    study_id TEXT NOT NULL,
    rater INTEGER NOT NULL,
    position INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    method INTEGER NOT NULL,
    image INTEGER NOT NULL,
    flipped INTEGER NOT NULL,
    repeat_of INTEGER NOT NULL,
    shown REAL,
    PRIMARY KEY (study_id, rater, position),
    UNIQUE (study_id, rater, task_id)
);
CREATE TABLE IF NOT EXISTS study_ratings (
    study_id TEXT NOT NULL,
    rater INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    level INTEGER NOT NULL CHECK (level BETWEEN 1 AND 4),
    seconds REAL NOT NULL,
    recorded REAL NOT NULL,
    PRIMARY KEY (study_id, rater, task_id)
);
"""

OPEN, CLOSED = "OPEN", "CLOSED"


@dataclass(frozen=True)
class StudyMethod:
    method: int
    job_id: str
    team: str
    baseline: bool


@dataclass(frozen=True)
class StudyRecord:
    study_id: str
    track: Track
    phase_name: str
    state: str
    created: float
    closed: float | None
    seed: int
    ratings_per_pair: int
    rule: QualityRule
    methods: list[StudyMethod]
    images: list[str]


@dataclass(frozen=True)
class Rater:
    study_id: str
    rater: int
    token: str
    completion_code: str
    worker_id: str
    assignment_id: str


@dataclass(frozen=True)
class Shown:
    """A rater's current task (None when they are done) and their progress."""

    rater: Rater
    task: Task | None
    task_id: str
    done: int
    total: int


class StudyStore(SqliteStore):
    def __init__(self, path: Path | str) -> None:
        super().__init__(path, _SCHEMA)

    def create(self, study_id: str, track: Track, phase_name: str, design: StudyDesign,
               rule: QualityRule, methods: list[StudyMethod], images: list[str],
               plans: list[list[Task]]) -> StudyRecord:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM studies WHERE study_id = ?", (study_id,)).fetchone():
                raise InvalidArgument(f"a study named {study_id!r} exists already: choose "
                                      "another name")
            db.execute(
                "INSERT INTO studies VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)",
                (study_id, track.value, phase_name, OPEN, time.time(), design.seed,
                 design.ratings_per_pair, rule.max_control_failures, rule.max_repeat_gap,
                 rule.max_inconsistent_repeats, rule.min_median_seconds))
            db.executemany("INSERT INTO study_methods VALUES (?, ?, ?, ?, ?)",
                           [(study_id, m.method, m.job_id, m.team, m.baseline)
                            for m in methods])
            db.executemany("INSERT INTO study_images VALUES (?, ?, ?)",
                           [(study_id, index, name) for index, name in enumerate(images)])
            for rater, tasks in enumerate(plans):
                db.execute("INSERT INTO study_raters (study_id, rater, token, completion_code) "
                           "VALUES (?, ?, ?, ?)", (study_id, rater, secrets.token_urlsafe(24),
                                                   secrets.token_hex(4).upper()))
                db.executemany(
                    "INSERT INTO study_tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    [(study_id, rater, t.position, secrets.token_hex(8), t.kind.value,
                      t.method, t.image, t.flipped, t.repeat_of) for t in tasks])
        return self.study(study_id)

    def study(self, study_id: str) -> StudyRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM studies WHERE study_id = ?",
                                   (study_id,)).fetchone()
            if row is None:
                raise NotFound(f"no study named {study_id!r}")
            methods = self._db.execute("SELECT * FROM study_methods WHERE study_id = ? "
                                       "ORDER BY method", (study_id,)).fetchall()
            images = self._db.execute("SELECT name FROM study_images WHERE study_id = ? "
                                      "ORDER BY image", (study_id,)).fetchall()
        return StudyRecord(
            study_id, Track(row["track"]), row["phase_name"], row["state"], row["created"],
            row["closed"], row["seed"], row["ratings_per_pair"],
            QualityRule(row["max_control_failures"], row["max_repeat_gap"],
                        row["max_inconsistent_repeats"], row["min_median_seconds"]),
            [StudyMethod(m["method"], m["job_id"], m["team"], bool(m["baseline"]))
             for m in methods],
            [i["name"] for i in images])

    def studies(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT study_id FROM studies ORDER BY created").fetchall()
        return [row[0] for row in rows]

    def close_study(self, study_id: str) -> StudyRecord:
        with self._transaction() as db:
            db.execute("UPDATE studies SET state = ?, closed = ? WHERE study_id = ? AND "
                       "state = ?", (CLOSED, time.time(), study_id, OPEN))
        return self.study(study_id)

    def raters(self, study_id: str) -> list[Rater]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM study_raters WHERE study_id = ? ORDER BY "
                                    "rater", (study_id,)).fetchall()
        return [_rater(row) for row in rows]

    def rater(self, token: str) -> Rater:
        """The rater of a token; NotFound for a token no study gave out."""
        with self._lock:
            row = self._db.execute("SELECT * FROM study_raters WHERE token = ?",
                                   (token,)).fetchone()
        if row is None:
            raise NotFound("this rating link is not valid (unknown rater token): use the link "
                           "you were given, in full")
        return _rater(row)

    def open_rater(self, token: str) -> Rater:
        """The rater of a token of an open study; FailedPrecondition once it is closed."""
        rater = self.rater(token)
        if self.study(rater.study_id).state != OPEN:
            raise FailedPrecondition("this study is closed: it takes no more ratings. Thank "
                                     "you for your interest")
        return rater

    def shown(self, rater: Rater, worker_id: str = "", assignment_id: str = "") -> Shown:
        """The rater's first unanswered task, marked as shown now (the first time only: a
        reload does not restart the clock), and the worker and assignment ids of the
        crowdsourcing platform, recorded the first time they are given."""
        now = time.time()
        with self._transaction() as db:
            db.execute("UPDATE study_raters SET first_seen = COALESCE(first_seen, ?), "
                       "worker_id = CASE WHEN worker_id = '' THEN ? ELSE worker_id END, "
                       "assignment_id = CASE WHEN assignment_id = '' THEN ? "
                       "ELSE assignment_id END WHERE study_id = ? AND rater = ?",
                       (now, worker_id, assignment_id, rater.study_id, rater.rater))
            key = (rater.study_id, rater.rater)
            total = db.execute("SELECT COUNT(*) FROM study_tasks WHERE study_id = ? AND "
                               "rater = ?", key).fetchone()[0]
            done = db.execute("SELECT COUNT(*) FROM study_ratings WHERE study_id = ? AND "
                              "rater = ?", key).fetchone()[0]
            row = db.execute(
                "SELECT * FROM study_tasks t WHERE study_id = ? AND rater = ? AND NOT EXISTS "
                "(SELECT 1 FROM study_ratings r WHERE r.study_id = t.study_id AND "
                "r.rater = t.rater AND r.task_id = t.task_id) ORDER BY position LIMIT 1",
                key).fetchone()
            if row is not None:
                db.execute("UPDATE study_tasks SET shown = COALESCE(shown, ?) WHERE "
                           "study_id = ? AND rater = ? AND position = ?",
                           (now, rater.study_id, rater.rater, row["position"]))
        refreshed = self.rater(rater.token)
        if row is None:
            return Shown(refreshed, None, "", done, total)
        return Shown(refreshed, _task(row), row["task_id"], done, total)

    def task(self, rater: Rater, task_id: str) -> Task:
        """A task given to this rater; NotFound for any other (another rater's included)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM study_tasks WHERE study_id = ? AND rater = ? "
                                   "AND task_id = ?", (rater.study_id, rater.rater,
                                                       task_id)).fetchone()
        if row is None:
            raise NotFound(f"task {task_id!r} was not given to this rater: rate only the "
                           "tasks the page shows you")
        return _task(row)

    def rate(self, rater: Rater, task_id: str, level: int) -> tuple[int, bool]:
        """Records the rater's answer to a task given to them; returns (the stored level,
        whether this call stored it). The first answer stands: a second one for the same task
        (a double click, a retry, a reload) is not recorded."""
        if not 1 <= level <= 4:
            raise InvalidArgument(f"a rating is a level from 1 to 4, not {level}")
        self.task(rater, task_id)
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT shown FROM study_tasks WHERE study_id = ? AND rater = ? "
                             "AND task_id = ?", (rater.study_id, rater.rater,
                                                 task_id)).fetchone()
            if row["shown"] is None:
                raise FailedPrecondition(f"task {task_id!r} has not been shown yet: answer "
                                         "the task the page shows")
            cursor = db.execute(
                "INSERT OR IGNORE INTO study_ratings VALUES (?, ?, ?, ?, ?, ?)",
                (rater.study_id, rater.rater, task_id, level, now - row["shown"], now))
            stored = db.execute("SELECT level FROM study_ratings WHERE study_id = ? AND "
                                "rater = ? AND task_id = ?",
                                (rater.study_id, rater.rater, task_id)).fetchone()[0]
        return int(stored), cursor.rowcount == 1

    def answers(self, study_id: str) -> list[Answer]:
        """Every stored rating with its task, in the order recorded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT t.*, r.level, r.seconds FROM study_ratings r JOIN study_tasks t ON "
                "t.study_id = r.study_id AND t.rater = r.rater AND t.task_id = r.task_id "
                "WHERE r.study_id = ? ORDER BY r.recorded", (study_id,)).fetchall()
        return [Answer(row["rater"], _task(row), row["level"], row["seconds"]) for row in rows]

    def progress(self, study_id: str) -> dict[int, tuple[int, int]]:
        """rater -> (tasks answered, tasks given)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT t.rater, COUNT(*) AS total, COUNT(r.level) AS done FROM study_tasks t "
                "LEFT JOIN study_ratings r ON r.study_id = t.study_id AND r.rater = t.rater "
                "AND r.task_id = t.task_id WHERE t.study_id = ? GROUP BY t.rater",
                (study_id,)).fetchall()
        return {row["rater"]: (row["done"], row["total"]) for row in rows}


def _rater(row: sqlite3.Row) -> Rater:
    return Rater(row["study_id"], row["rater"], row["token"], row["completion_code"],
                 row["worker_id"], row["assignment_id"])


def _task(row: sqlite3.Row) -> Task:
    return Task(row["position"], TaskKind(row["kind"]), row["method"], row["image"],
                bool(row["flipped"]), row["repeat_of"])
