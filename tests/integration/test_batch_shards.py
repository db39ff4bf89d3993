"""Sharded batch evaluation against real servers: `pirm batch --local 2` end to end, a shard run
twice, and what ReportImageResults refuses."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from PIL import Image
from pirm.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

from services.batch.shard import ShardSpec, run_shard
from services.core.track import Track
from services.scorer.samples import srcnn_graph_def
from tests.cluster import sample_dataset
from tests.integration.conftest import Cluster
from tests.integration.helpers import graph_bytes, wait_job
from tests.official import track_b_figures

Stub = scorer_pb2_grpc.ScorerServiceStub
PATCHES = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few track B patches; the HD timing images shrunk, so that timing each job (model and
    baseline, and the memory measurement) takes seconds, not a minute."""
    folder = sample_dataset(tmp_path_factory.mktemp("batch"), Track.B, patches_per_photo=1)
    for hd in (folder / "HD_res").glob("*.png"):
        with Image.open(hd) as image:
            image.resize((160, 90)).save(hd)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    for seed in (1, 2):
        (folder / f"team{seed}.pb").write_bytes(srcnn_graph_def(seed=seed))
    return folder


@pytest.fixture(scope="module")
def reference_job(scorer_stub: Stub, dataset: Path, models: Path) -> scorer_pb2.Job:
    """A normal (scorer-evaluated) job of team1.pb on the same data."""
    job = scorer_stub.SubmitJob(scorer_pb2.SubmitJobRequest(
        track=common_pb2.TRACK_B, graph_def=(models / "team1.pb").read_bytes(),
        dataset=str(dataset), team="reference", model_name="team1.pb"), timeout=60)
    done = wait_job(scorer_stub, job.job_id)
    assert done.state == scorer_pb2.JOB_STATE_SUCCEEDED, done.error
    return done


def image_rows(cluster: Cluster, job_id: str) -> list[tuple[str, float, float]]:
    with closing(sqlite3.connect(cluster.store)) as db:
        return db.execute("SELECT image, psnr, msssim FROM image_results WHERE job_id = ? "
                          "ORDER BY image", (job_id,)).fetchall()


def shard(cluster: Cluster, dataset: Path, models: str, index: int, batch_id: str,
          shards: int = 2) -> ShardSpec:
    return ShardSpec(index=index, shards=shards, track=Track.B, models=models, data=dataset,
                     scorer=cluster.target(cluster.scorer),
                     inference=cluster.target(cluster.inference),
                     metrics=cluster.target(cluster.metrics), batch_id=batch_id)


def test_pirm_batch_local_evaluates_every_image_once_as_a_normal_job_would(
    cluster: Cluster, scorer_stub: Stub, dataset: Path, models: Path,
    reference_job: scorer_pb2.Job,
) -> None:
    batch = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "batch", "--local", "2", "--track", "B",
         "--models", str(models), "--data", str(dataset),
         "--scorer", cluster.target(cluster.scorer),
         "--inference", cluster.target(cluster.inference),
         "--metrics", cluster.target(cluster.metrics)],
        capture_output=True, text=True, timeout=300)
    assert batch.returncode == 0, batch.stdout + batch.stderr
    out = batch.stdout
    assert "shard 0/2: 4 of 4 (model, image) pairs measured and reported" in out
    assert "shard 1/2: 4 of 4" in out
    assert "Track B leaderboard" in out
    assert "team1" in out and "team2" in out

    listed = scorer_stub.ListJobs(scorer_pb2.ListJobsRequest(), timeout=10).jobs
    jobs = {j.team: j for j in listed if j.sharded and j.request_id.startswith("pirm-batch-b-")}
    assert set(jobs) == {"team1", "team2"}
    names = sorted(p.name for p in (dataset / "patches" / "iphone").iterdir())
    for team, job in jobs.items():
        assert job.state == scorer_pb2.JOB_STATE_SUCCEEDED, job.error
        assert job.result.images == PATCHES and job.result.runtime.median_ms > 0
        rows = image_rows(cluster, job.job_id)
        assert [name for name, _, _ in rows] == names  # each image once
        for (name, psnr, msssim), ref in zip(
                rows, track_b_figures(models / f"{team}.pb", names, dataset / "patches"),
                strict=True):
            assert name == ref.name
            assert abs(psnr - ref.psnr) < 1e-4 and abs(msssim - ref.msssim) < 1e-6
    # The same figures as the scorer's own evaluation of the same model and data.
    assert image_rows(cluster, jobs["team1"].job_id) == image_rows(cluster,
                                                                  reference_job.job_id)
    assert jobs["team1"].result.psnr == reference_job.result.psnr
    assert jobs["team1"].result.msssim == reference_job.result.msssim


def test_a_shard_run_twice_stores_each_image_once(
    cluster: Cluster, scorer_stub: Stub, dataset: Path, models: Path,
) -> None:
    model = str(models / "team2.pb")
    first = run_shard(shard(cluster, dataset, model, 0, "twice"))
    again = run_shard(shard(cluster, dataset, model, 0, "twice"))
    assert (first.pairs, first.reported) == (again.pairs, again.reported) == (2, 2)
    (job,) = [j for j in scorer_stub.ListJobs(scorer_pb2.ListJobsRequest(team="team2"),
                                              timeout=10).jobs if j.request_id.startswith("twice/")]
    assert job.state == scorer_pb2.JOB_STATE_QUEUED and job.progress.stage == "shards"
    assert (job.progress.images_done, job.progress.images_total) == (2, PATCHES)
    stored = image_rows(cluster, job.job_id)
    assert len(stored) == 2

    run_shard(shard(cluster, dataset, model, 1, "twice"))
    done = wait_job(scorer_stub, job.job_id)
    assert done.state == scorer_pb2.JOB_STATE_SUCCEEDED, done.error
    late = run_shard(shard(cluster, dataset, model, 0, "twice"))  # a retried pod, too late
    assert (late.reported, late.skipped_jobs) == (0, [job.job_id])
    assert scorer_stub.GetJob(scorer_pb2.GetJobRequest(job_id=job.job_id)) == done
    final = image_rows(cluster, job.job_id)
    assert len(final) == PATCHES and set(stored) <= set(final)


def report(stub: Stub, job_id: str, image: str, psnr: float = 21.0,
           msssim: float = 0.9) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        stub.ReportImageResults(scorer_pb2.ReportImageResultsRequest(
            job_id=job_id, results=[scorer_pb2.ImageResult(image=image, psnr=psnr,
                                                           msssim=msssim)]), timeout=10)
    return refused.value


def test_report_image_results_refusals(
    scorer_stub: Stub, dataset: Path, models: Path, reference_job: scorer_pb2.Job,
) -> None:
    waiting = scorer_stub.SubmitJob(scorer_pb2.SubmitJobRequest(
        track=common_pb2.TRACK_B, graph_def=(models / "team1.pb").read_bytes(),
        dataset=str(dataset), team="refusals", sharded=True), timeout=60)
    assert waiting.sharded and waiting.progress.stage == "shards"

    unknown = report(scorer_stub, waiting.job_id, "../canon/0.jpg")
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not in its dataset" in unknown.details() and "0.jpg" in unknown.details()
    nan = report(scorer_stub, waiting.job_id, "0.jpg", msssim=math.nan)
    assert nan.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in nan.details()
    normal = report(scorer_stub, reference_job.job_id, "0.jpg")
    assert normal.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sharded" in normal.details()
    missing = report(scorer_stub, "no-such-job", "0.jpg")
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    scorer_stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=waiting.job_id), timeout=10)
    cancelled = report(scorer_stub, waiting.job_id, "0.jpg")
    assert cancelled.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CANCELLED" in cancelled.details()
    job = scorer_stub.GetJob(scorer_pb2.GetJobRequest(job_id=waiting.job_id), timeout=10)
    assert (job.progress.images_done, job.progress.images_total) == (0, PATCHES)


def test_a_model_failing_on_an_image_fails_its_job_not_the_batch(
    cluster: Cluster, scorer_stub: Stub, dataset: Path, models: Path, tmp_path: Path,
) -> None:
    """An inverted output has no NumPy MS-SSIM (NaN): that model's job fails with the reason as
    soon as a shard meets it; the shards go on with the other model, whose job succeeds."""
    (tmp_path / "good.pb").write_bytes((models / "team1.pb").read_bytes())
    (tmp_path / "inverted.pb").write_bytes(
        graph_bytes(lambda tf, x: tf.identity(1.0 - x, name="output")))
    reports = [run_shard(shard(cluster, dataset, str(tmp_path), index, "failing"))
               for index in (0, 1)]
    jobs = {j.team: j for j in scorer_stub.ListJobs(scorer_pb2.ListJobsRequest(), timeout=10).jobs
            if j.request_id.startswith("failing/")}
    assert set(jobs) == {"good", "inverted"}
    failed = wait_job(scorer_stub, jobs["inverted"].job_id)
    assert failed.state == scorer_pb2.JOB_STATE_FAILED
    assert failed.error.startswith("batch shard: image ") and "MS-SSIM is undefined (NaN)" in \
        failed.error
    # The first shard to meet it failed it; the other found it ended (or failed it first).
    assert failed.job_id in reports[0].failed_jobs + reports[1].failed_jobs
    good = wait_job(scorer_stub, jobs["good"].job_id)
    assert good.state == scorer_pb2.JOB_STATE_SUCCEEDED, good.error
    assert sum(r.reported for r in reports) >= PATCHES
    assert len(image_rows(cluster, good.job_id)) == PATCHES
    # Another shard's failure report for the ended job changes nothing.
    again = scorer_stub.ReportImageResults(scorer_pb2.ReportImageResultsRequest(
        job_id=failed.job_id, error="image 0.jpg: another reason"), timeout=10)
    assert again.state == scorer_pb2.JOB_STATE_FAILED and again.error == failed.error
