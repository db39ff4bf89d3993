"""A job store that cannot be written (a full disk, a read-only volume): a submission is refused
with Unavailable saying why (UNAVAILABLE on the wire: retry later), and nothing partial is
stored — neither the job nor its model bytes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from services.core.errors import Unavailable
from services.core.track import Phase, Track
from services.scorer.jobs import JobSpec
from services.scorer.store import JobStore

MODEL = b"\x0a\x05input" + bytes(range(256)) * 4096  # 1 MiB, more than the full store holds


def spec(team: str = "t") -> JobSpec:
    return JobSpec(track=Track.B, phase=Phase.VALIDATION, dataset="/data/dped",
                   model_sha256="ab" * 32, team=team)


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_full_store_refuses_and_keeps_nothing(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = JobStore(path)
    # SQLite's own page budget: the store is "full" the way a full disk makes it.
    store._db.execute("PRAGMA max_page_count = 40")
    with pytest.raises(Unavailable, match="disk is full.*nothing was stored"):
        store.create_job(spec(), MODEL)
    assert store.list_jobs() == []
    store.close()
    assert rows(path, "jobs") == 0 and rows(path, "models") == 0
    reopened = JobStore(path)  # the store is intact once there is room again
    job, created = reopened.create_job(spec(), b"\x0a\x05input")
    assert created and reopened.get_job(job.job_id).state.value == "QUEUED"
    reopened.close()


def test_read_only_store_refuses(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store._db.execute("PRAGMA query_only = ON")  # a volume remounted read-only
    with pytest.raises(Unavailable, match="read-only"):
        store.create_job(spec(), b"\x0a\x05input")
    assert store.list_jobs() == []
    store.close()
