"""A sharded job whose batch shards died (or never started) is not left waiting in silence: once
no shard has reported for the scorer's --shard-silence-s it fails, as the platform's failure
(never counted against a quota), saying why; a job whose shards keep reporting, or whose
images are all in, is left alone."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from pirm.v1 import scorer_pb2

from services.client import ScorerClient
from services.core.quality import PairQuality
from services.core.track import Track
from services.scorer.server import ScorerConfig
from services.scorer.server import create_server as create_scorer
from services.scorer.store import JobStore
from tests.cluster import TEST_TIMING, Cluster, sample_dataset
from tests.integration.helpers import graph_bytes

SILENCE_S = 4.0


def identity(tf: object, x: object) -> None:
    tf.identity(x, name="output")  # type: ignore[attr-defined]


def test_a_sharded_job_no_shard_reports_to_fails_with_the_reason(cluster: Cluster,
                                                                  tmp_path: Path) -> None:
    dataset = sample_dataset(tmp_path, Track.B, patches_per_photo=1)
    config = replace(ScorerConfig(
        inference=cluster.target(cluster.inference), metrics=cluster.target(cluster.metrics),
        store=tmp_path / "scorer.db", state_dir=tmp_path, timing=TEST_TIMING),
        shard_silence_s=SILENCE_S)
    scorer = create_scorer("127.0.0.1:0", config)
    try:
        with ScorerClient(f"127.0.0.1:{scorer.port}") as client:
            silent = client.submit("B", graph_bytes(identity), dataset, team="silent",
                                   sharded=True)
            reporting = client.submit("B", graph_bytes(identity), dataset, team="reporting",
                                      sharded=True)
            first = sorted(p.name for p in (dataset / "patches" / "iphone").iterdir())[0]
            submitted = time.monotonic()
            # A shard that keeps reporting (the same image again: stored once, still news),
            # every half second: its job keeps waiting while the other one goes silent.
            while time.monotonic() - submitted < SILENCE_S + 2.0:
                client.report_image_results(reporting.job_id,
                                            {first: PairQuality(25.0, 0.95)})
                time.sleep(0.5)
            failed = client.wait(silent.job_id, timeout_s=120)
            waited = time.monotonic() - submitted
            still = client.get(reporting.job_id)
    finally:
        scorer.stop(grace=1.0)
    assert failed.state == scorer_pb2.JOB_STATE_FAILED, failed
    assert failed.failure_kind == "platform"
    assert "no batch shard reported images for 4 s (0/" in failed.error
    assert SILENCE_S <= waited < 60  # bounded: the runner checks every silence/4 (<= 30 s)
    assert still.state == scorer_pb2.JOB_STATE_QUEUED and still.progress.stage == "shards"


def test_the_store_fails_only_silent_incomplete_sharded_jobs(tmp_path: Path) -> None:
    from services.core.jobs import JobState
    from services.core.track import Phase
    from services.scorer.jobs import JobSpec

    store = JobStore(tmp_path / "scorer.db")
    spec = JobSpec(track=Track.B, phase=Phase.VALIDATION, dataset="/d", model_sha256="0" * 64,
                   team="t", sharded=True)
    silent, _ = store.create_job(replace(spec, request_id="1"), b"m", images_total=2)
    complete, _ = store.create_job(replace(spec, request_id="2"), b"m", images_total=1)
    store.put_shard_results(complete.job_id, {"0.jpg": PairQuality(25.0, 0.9)})
    plain, _ = store.create_job(replace(spec, request_id="3", sharded=False), b"m")
    assert store.fail_silent_shards(60.0) == []  # nothing silent that long yet
    later = time.time() + 61.0
    assert store.fail_silent_shards(60.0, now=later) == [silent.job_id]
    assert store.get_job(silent.job_id).state is JobState.FAILED
    assert store.get_job(silent.job_id).failure_kind == "platform"
    assert store.get_job(complete.job_id).state is JobState.QUEUED  # waits for a runner
    assert store.get_job(plain.job_id).state is JobState.QUEUED
    assert store.fail_silent_shards(60.0, now=later) == []
    store.close()
