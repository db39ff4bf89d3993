"""The scorer's job lifecycle against real servers: cancellation, MOS set after the fact,
admission limits with a retry hint, and several inference / metrics endpoints (round-robin,
a dead one skipped)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from pirm.v1 import common_pb2, inference_pb2, inference_pb2_grpc, scorer_pb2, scorer_pb2_grpc

from services.client import ScorerClient
from services.common.cluster import free_port, is_serving
from services.common.server import RunningServer
from services.core.channel import open_channel
from services.core.tensors import to_tensor
from services.core.timing import FIXED, TimingOptions
from services.core.track import Track
from services.inference.server import create_server as create_inference
from services.metrics.server import create_server as create_metrics
from services.scorer.samples import srcnn_graph_def
from services.scorer.server import ScorerConfig
from services.scorer.server import create_server as create_scorer
from services.scorer.store import QueueLimits
from tests.cluster import sample_dataset
from tests.integration.conftest import TEST_TIMING, Cluster
from tests.integration.helpers import (
    graph_bytes,
    inferences_of,
    slow_graph,
    wait_for,
    wait_job,
)

Stub = scorer_pb2_grpc.ScorerServiceStub
InferenceStub = inference_pb2_grpc.InferenceServiceStub
KAPPA, MOS_REF_B = 0.0719, 2.295  # SPEC.md section 3


def submit(stub: Stub, dataset: Path, model: bytes, **fields: object) -> scorer_pb2.Job:
    return stub.SubmitJob(scorer_pb2.SubmitJobRequest(
        track=common_pb2.TRACK_B, graph_def=model, dataset=str(dataset), **fields), timeout=60)


def wait_until(stub: Stub, job_id: str, done: object) -> scorer_pb2.Job:
    """The first update of the job for which done(job) holds (or its final state)."""
    for job in stub.WatchJob(scorer_pb2.GetJobRequest(job_id=job_id), timeout=300):
        if done(job):
            return job
    return stub.GetJob(scorer_pb2.GetJobRequest(job_id=job_id), timeout=10)


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_dataset(tmp_path_factory.mktemp("patches"), Track.B, patches_per_photo=2)


def test_cancel_queued_and_running_jobs(cluster: Cluster, scorer_stub: Stub,
                                        patches: Path) -> None:
    slow = slow_graph()
    running = submit(scorer_stub, patches, slow, team="cancel", model_name="slow")
    queued = submit(scorer_stub, patches, srcnn_graph_def(), team="cancel", model_name="next")
    # The scorer runs one job at a time: the second waits while the first runs.
    job = wait_until(scorer_stub, running.job_id,
                     lambda j: j.state == scorer_pb2.JOB_STATE_RUNNING
                     and j.progress.images_done >= 1)
    assert job.state == scorer_pb2.JOB_STATE_RUNNING, job
    cancelled = scorer_stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=queued.job_id))
    assert cancelled.state == scorer_pb2.JOB_STATE_CANCELLED
    assert not cancelled.HasField("started")  # never ran
    cancelled = scorer_stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=running.job_id))
    assert cancelled.state == scorer_pb2.JOB_STATE_CANCELLED
    final = wait_job(scorer_stub, running.job_id)
    assert final.state == scorer_pb2.JOB_STATE_CANCELLED and not final.HasField("result")
    assert final.progress.images_done < final.progress.images_total
    # The runner is free again, and cancelling a finished job changes nothing.
    after = wait_job(scorer_stub, submit(scorer_stub, patches, srcnn_graph_def(),
                                         team="cancel", model_name="after").job_id)
    assert after.state == scorer_pb2.JOB_STATE_SUCCEEDED, after.error
    again = scorer_stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=after.job_id))
    assert again.state == scorer_pb2.JOB_STATE_SUCCEEDED
    assert scorer_stub.GetJob(scorer_pb2.GetJobRequest(job_id=running.job_id)).state == \
        scorer_pb2.JOB_STATE_CANCELLED


def test_cancel_during_timing_frees_the_device(cluster: Cluster, patches: Path,
                                              inference_stub: InferenceStub,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    """A job cancelled in its timing stage stops the measurement on the inference service:
    with 10 minutes of timing asked for, the next timing call still gets the device at once
    (were the measurement left running, it would wait for it and the test time out)."""
    state = tmp_path_factory.mktemp("long-timing")
    config = ScorerConfig(
        inference=cluster.target(cluster.inference), metrics=cluster.target(cluster.metrics),
        store=state / "scorer.db", state_dir=state,
        timing=TimingOptions(warmup_runs=1, min_runs=2, min_seconds=600.0, max_runs=100_000,
                             protocol=FIXED),
    )
    scorer = create_scorer("127.0.0.1:0", config)
    try:
        with open_channel(f"127.0.0.1:{scorer.port}", 64) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            job = submit(stub, patches, srcnn_graph_def(seed=3), team="cancel-timing")
            timing = wait_until(stub, job.job_id, lambda j: j.progress.stage == "timing")
            assert timing.progress.stage == "timing", timing
            time.sleep(2.0)  # the Benchmark call is under way well within this
            stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=job.job_id))
            assert wait_job(stub, job.job_id).state == scorer_pb2.JOB_STATE_CANCELLED
        quick = inference_pb2.BenchmarkRequest(
            model=f"sha256-{job.model_sha256[:16]}",
            input=to_tensor(np.zeros((1, 64, 64, 3), np.float32)),
            options=inference_pb2.TimingOptions(warmup_runs=1, min_runs=2, max_runs=3),
        )
        assert inference_stub.Benchmark(quick, timeout=300).timing.runs >= 2
    finally:
        scorer.stop(grace=1.0)


def test_models_no_job_needs_are_unloaded_once_idle(
        cluster: Cluster, inference_stub: InferenceStub, patches: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A long challenge would otherwise keep every submission loaded on inference. With
    --model-idle-s 0, a job's model goes when the job ends, a cancelled job's too; a model a
    queued job needs stays, and so do the baselines; a report's crops load it again."""
    def loaded() -> set[str]:
        listed = inference_stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
        return {model.name for model in listed.models}

    def name(job: scorer_pb2.Job) -> str:
        return f"sha256-{job.model_sha256[:16]}"

    state = tmp_path_factory.mktemp("idle-models")
    config = ScorerConfig(
        inference=cluster.target(cluster.inference), metrics=cluster.target(cluster.metrics),
        store=state / "scorer.db", state_dir=state, timing=TEST_TIMING, model_idle_s=0.0)
    scorer = create_scorer("127.0.0.1:0", config)
    try:
        with open_channel(f"127.0.0.1:{scorer.port}", 64) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            first = submit(stub, patches, srcnn_graph_def(seed=11), team="idle")
            queued = submit(stub, patches, slow_graph(), team="idle")
            assert name(first) in loaded()  # vetted at submission
            assert wait_job(stub, first.job_id).state == scorer_pb2.JOB_STATE_SUCCEEDED
            assert name(queued) in loaded()  # a queued or running job needs it
            stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=queued.job_id), timeout=10)
            assert wait_job(stub, queued.job_id).state == scorer_pb2.JOB_STATE_CANCELLED
            # Released once the runner lets go of the job, just after it stored its end.
            wait_for(lambda: not {name(first), name(queued)} & loaded(),
                     "the ended jobs' models to be unloaded", 60)
            assert "baseline-B" in loaded()
            image = stub.GetJobImages(scorer_pb2.GetJobImagesRequest(job_id=first.job_id),
                                      timeout=10).images[0].image
            crops = stub.GetImageCrops(scorer_pb2.GetImageCropsRequest(
                job_id=first.job_id, images=[image], size=16), timeout=120).crops
            assert crops[0].output_png.startswith(b"\x89PNG")
    finally:
        scorer.stop(grace=1.0)


def test_final_phase_job_waits_for_its_mos(cluster: Cluster, scorer_stub: Stub,
                                           patches: Path) -> None:
    job = wait_job(scorer_stub, submit(scorer_stub, patches, srcnn_graph_def(), team="mos-later",
                                       phase=common_pb2.PHASE_FINAL).job_id)
    assert job.state == scorer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert not job.result.HasField("mos") and job.result.scores.score_a != job.result.scores.score_a

    def board_teams() -> list[str]:
        board = scorer_stub.Leaderboard(scorer_pb2.LeaderboardRequest(
            track=common_pb2.TRACK_B, phase=common_pb2.PHASE_FINAL))
        return [entry.team for entry in board.entries]

    assert "mos-later" not in board_teams()
    scored = scorer_stub.SetMos(scorer_pb2.SetMosRequest(job_id=job.job_id, mos=2.8))
    r = scored.result
    assert r.mos == 2.8
    speed = min(4.0, r.baseline_runtime.median_ms / r.runtime.median_ms)
    perceptual = KAPPA * (2.8 - MOS_REF_B)
    assert r.scores.score_a == pytest.approx(4 * (r.psnr - 21.0) + 100 * perceptual + 2 * speed)
    assert r.scores.score_c == pytest.approx(2 * (r.psnr - 21.0) + 200 * perceptual + 2.9 * speed)
    assert "mos-later" in board_teams()
    # MOS only means something for a finished final-phase job.
    unfinished = submit(scorer_stub, patches, srcnn_graph_def(), team="mos-later",
                        phase=common_pb2.PHASE_FINAL)
    scorer_stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=unfinished.job_id))
    validation = submit(scorer_stub, patches, srcnn_graph_def(), team="mos-later")
    scorer_stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=validation.job_id))
    for job_id, mos, code, text in (
        (unfinished.job_id, 3.0, grpc.StatusCode.FAILED_PRECONDITION, "CANCELLED"),
        (validation.job_id, 3.0, grpc.StatusCode.FAILED_PRECONDITION, "validation-phase"),
        (job.job_id, -1.0, grpc.StatusCode.INVALID_ARGUMENT, "MOS"),
        ("no-such-job", 3.0, grpc.StatusCode.NOT_FOUND, "no-such-job"),
    ):
        with pytest.raises(grpc.RpcError) as error:
            scorer_stub.SetMos(scorer_pb2.SetMosRequest(job_id=job_id, mos=mos))
        assert error.value.code() == code and text in error.value.details()


def test_undefined_msssim_fails_the_job_clearly(scorer_stub: Stub, patches: Path) -> None:
    """An inverted output makes the NumPy flavour's contrast terms negative: no value, so the
    job fails with the reason instead of storing NaN or crashing."""
    inverted = graph_bytes(lambda tf, x: tf.identity(1.0 - x, name="output"))
    job = wait_job(scorer_stub, submit(scorer_stub, patches, inverted, team="inverted").job_id)
    assert job.state == scorer_pb2.JOB_STATE_FAILED
    assert "MS-SSIM is undefined (NaN)" in job.error and "anti-correlated" in job.error


@dataclass
class Pooled:
    """A scorer over two inference endpoints and three metrics endpoints, one of them dead,
    with tight admission limits."""

    scorer: RunningServer
    stub: Stub
    inference_targets: list[str]


@pytest.fixture(scope="module")
def pooled(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pooled]:
    second_inference = create_inference("127.0.0.1:0")
    second_metrics = create_metrics("127.0.0.1:0")
    inference_targets = [cluster.target(cluster.inference), f"127.0.0.1:{second_inference.port}"]
    dead_metrics = f"127.0.0.1:{free_port()}"
    state = tmp_path_factory.mktemp("pooled")
    config = ScorerConfig(
        inference=",".join(inference_targets),
        metrics=f"{dead_metrics},{cluster.target(cluster.metrics)},"
                f"127.0.0.1:{second_metrics.port}",
        store=state / "scorer.db", state_dir=state, timing=TEST_TIMING,
        limits=QueueLimits(max_queued=10, max_active_per_team=1, retry_after_s=7,
                           max_images_per_job=100),
    )
    scorer = create_scorer("127.0.0.1:0", config)
    channel = open_channel(f"127.0.0.1:{scorer.port}", 64)
    yield Pooled(scorer, scorer_pb2_grpc.ScorerServiceStub(channel), inference_targets)
    channel.close()
    for running in (scorer, second_metrics, second_inference):
        running.stop(grace=1.0)


def test_several_endpoints_share_a_job(pooled: Pooled, patches: Path) -> None:
    model = srcnn_graph_def(seed=7)
    job = wait_job(pooled.stub, submit(pooled.stub, patches, model, team="pool").job_id)
    assert job.state == scorer_pb2.JOB_STATE_SUCCEEDED, job.error
    name = f"sha256-{job.model_sha256[:16]}"
    counts = [inferences_of(target, name) for target in pooled.inference_targets]
    assert all(count > 0 for count in counts), counts  # round-robin reached both
    assert sum(counts) >= job.result.images
    assert set(job.result.stage_seconds) >= {"prepare", "inference", "metrics", "store",
                                             "quality_wall", "timing_wall"}
    # TEST_TIMING: at most 3 pairs, fewer than a 95% interval of the ratio needs.
    stopping = job.result.timing_stopping
    assert (stopping.protocol, stopping.pairs, stopping.reason) == ("sequential", 3, "max_pairs")
    assert job.result.runtime.peak_memory_mb > 0
    assert not any("peak memory" in reused for reused in stopping.reused)
    # The same bytes again: the memory probe, run beside the quality stage on each endpoint,
    # is not repeated, and the result says so.
    again = wait_job(pooled.stub, submit(pooled.stub, patches, model, team="pool").job_id)
    assert again.state == scorer_pb2.JOB_STATE_SUCCEEDED, again.error
    # Each endpoint keeps its own figure (its node's), and the timing may run on either.
    assert again.result.runtime.peak_memory_mb == pytest.approx(
        job.result.runtime.peak_memory_mb, rel=0.05)
    assert any("peak memory" in reused for reused in again.result.timing_stopping.reused)


def test_admission_limit_per_team_with_retry_hint(pooled: Pooled, patches: Path) -> None:
    first = submit(pooled.stub, patches, slow_graph(), team="limited")
    with pytest.raises(grpc.RpcError) as refused:
        submit(pooled.stub, patches, srcnn_graph_def(), team="limited")
    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit 1" in error.details() and "retry" in error.details()
    assert ("retry-after-s", "7") in tuple(error.trailing_metadata())
    other = submit(pooled.stub, patches, srcnn_graph_def(), team="someone-else")
    assert other.state == scorer_pb2.JOB_STATE_QUEUED
    pooled.stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=first.job_id))
    admitted = submit(pooled.stub, patches, srcnn_graph_def(), team="limited")
    assert admitted.state == scorer_pb2.JOB_STATE_QUEUED
    for job_id in (other.job_id, admitted.job_id):
        pooled.stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=job_id))


def test_datasets_over_the_image_limit_are_refused(pooled: Pooled,
                                                   tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:
    big = sample_dataset(tmp_path_factory.mktemp("big"), Track.B, patches_per_photo=30)
    assert len(list((big / "patches" / "iphone").iterdir())) > 100
    with pytest.raises(grpc.RpcError) as refused:
        submit(pooled.stub, big, srcnn_graph_def(), team="big")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 100" in (refused.value.details() or "")


def test_watches_are_capped_so_the_scorer_keeps_answering(cluster: Cluster, patches: Path,
                                                          tmp_path: Path) -> None:
    """Each WatchJob stream holds a server thread while its job waits: with 4 threads at most
    3 watches stream, the next is refused with a retry hint, GetJob and health still answer, and
    ScorerClient.wait falls back to polling."""
    scorer = create_scorer("127.0.0.1:0", ScorerConfig(
        inference=cluster.target(cluster.inference), metrics=cluster.target(cluster.metrics),
        store=tmp_path / "scorer.db", state_dir=tmp_path, timing=TEST_TIMING), workers=4)
    target = f"127.0.0.1:{scorer.port}"
    try:
        with open_channel(target, 64) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            jobs = [submit(stub, patches, slow_graph(), team="watch", model_name="slow")]
            jobs += [submit(stub, patches, srcnn_graph_def(seed=seed), team="watch")
                     for seed in range(4)]
            stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=jobs[-1].job_id))
            watches = [stub.WatchJob(scorer_pb2.GetJobRequest(job_id=job.job_id), timeout=300)
                       for job in jobs[1:4]]
            for watch in watches:
                assert next(iter(watch)).state == scorer_pb2.JOB_STATE_QUEUED  # streaming
            with pytest.raises(grpc.RpcError) as refused:
                next(iter(stub.WatchJob(scorer_pb2.GetJobRequest(job_id=jobs[0].job_id),
                                        timeout=30)))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "poll GetJob" in (refused.value.details() or "")
            assert ("retry-after-s", "5") in tuple(refused.value.trailing_metadata())
            assert stub.GetJob(scorer_pb2.GetJobRequest(job_id=jobs[0].job_id), timeout=5)
            assert is_serving(target, timeout_s=5)
            with ScorerClient(target) as client:  # polls, as the watches are all taken
                assert client.wait(jobs[-1].job_id, timeout_s=30).state == \
                    scorer_pb2.JOB_STATE_CANCELLED
                # watch() too (what `pirm batch` follows its jobs with)
                assert list(client.watch(jobs[-1].job_id, timeout_s=30))[-1].state == \
                    scorer_pb2.JOB_STATE_CANCELLED
            for job in jobs:
                stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=job.job_id))
            for watch in watches:
                assert list(watch)[-1].state == scorer_pb2.JOB_STATE_CANCELLED
    finally:
        scorer.stop(grace=1.0)
