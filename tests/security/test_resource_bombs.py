"""Resource bombs made of allowed ops, each submitted as one team's job while another team's
honest job runs beside it on the same inference node: the bomb fails within bounded time and
memory with its reason, the honest job's figures are those of an independent computation.

The node is small on purpose: its TensorFlow worker may add 1 GiB (a model's memory limit of
256 MiB, times 4) and one run may last MAX_RUN_S. Without these limits each allocation bomb
below would take 1.2 to 7.8 GB on a 100x100 patch, and the matmul bomb would hold the worker
for half an hour, every other job's inference waiting behind it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from pirm.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

from services.common.server import RunningServer
from services.core.channel import open_channel
from services.core.limits import MIB
from services.core.track import Track
from services.inference import telemetry
from services.inference.engine import EngineSettings
from services.inference.server import create_server as create_inference
from services.metrics.server import create_server as create_metrics
from services.scorer.samples import make_sample_dataset
from services.scorer.server import ScorerConfig
from services.scorer.server import create_server as create_scorer
from tests.cluster import TEST_TIMING
from tests.integration.conftest import brighten
from tests.integration.helpers import chain_graph, graph_bytes, wait_job
from tests.official import track_b_figures

MAX_RUN_S = 10.0  # thousands of times what the honest model's runs take here (milliseconds)
# Generous: an allocation bomb normally fails in well under a second, the matmul bomb in
# MAX_RUN_S plus a worker restart (a TensorFlow import, 3-15 s on a busy machine).
BOUND_S = 120.0


def sides(tf: Any, x: Any) -> tuple[Any, Any]:
    shape = tf.shape(x)
    return shape[1], shape[2]


def fill(tf: Any, x: Any) -> None:
    """A tensor 256 times the input's sides (7.8 GB on a 100x100 patch)."""
    height, width = sides(tf, x)
    big = tf.fill(tf.stack([height * 256, width * 256, 3]), 1.0)
    tf.identity(x + tf.reduce_sum(big) * 0, name="output")


def tile(tf: Any, x: Any) -> None:
    """The input tiled by its own sides: [1, H^2, W^2, 3] (1.2 GB on a 100x100 patch)."""
    height, width = sides(tf, x)
    big = tf.tile(x, tf.stack([1, height, width, 1]))
    tf.identity(x + tf.reduce_sum(big) * 0, name="output")


def int32_range(tf: Any, x: Any) -> None:
    """range(4 (HW)^2) in int32 (1.6 GB on a 100x100 patch)."""
    height, width = sides(tf, x)
    pixels = height * width
    big = tf.range(pixels * pixels * 4)
    tf.identity(x + tf.cast(tf.reduce_sum(big), tf.float32) * 0, name="output")


def resize(tf: Any, x: Any) -> None:
    """The input resized to 100 times its sides (1.2 GB on a 100x100 patch)."""
    height, width = sides(tf, x)
    big = tf.compat.v1.image.resize_bilinear(x, tf.stack([height * 100, width * 100]))
    tf.identity(x + tf.reduce_sum(big) * 0, name="output")


def endless_matmuls(tf: Any, x: Any) -> None:
    """Little memory (a 4000x4000 matrix on a 100x100 patch), 300 chained products of it:
    half an hour of CPU."""
    height, _ = sides(tf, x)
    matrix = tf.fill(tf.stack([height * 40, height * 40]), 0.0)
    for _ in range(300):
        matrix = tf.matmul(matrix, matrix)
    tf.identity(x + tf.reduce_sum(matrix), name="output")


# What each allocation bomb's job fails with: the op that asked for too much.
ALLOCATION_BOMBS = {
    "fill": (fill, "Fill"),
    "tile": (tile, "Tile"),
    "int32-range": (int32_range, "range"),
    "resize": (resize, "ResizeBilinear"),
}


@dataclass
class Node:
    """One small inference node, a metrics service, and a scorer running two jobs at once."""

    inference: RunningServer
    scorer: scorer_pb2_grpc.ScorerServiceStub
    dataset: Path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    state = tmp_path_factory.mktemp("bombs")
    # 100x100 patches; small timing images, so that an honest job takes seconds.
    dataset = make_sample_dataset(state / "pirm2018", Track.B, patches_per_photo=1,
                                  hd_size=(160, 90))
    inference = create_inference("127.0.0.1:0", EngineSettings(
        memory_limit_bytes=256 * MIB, max_run_s=MAX_RUN_S, intra_op_threads=1))
    metrics = create_metrics("127.0.0.1:0")
    scorer = create_scorer("127.0.0.1:0", ScorerConfig(
        inference=f"127.0.0.1:{inference.port}", metrics=f"127.0.0.1:{metrics.port}",
        store=state / "scorer.db", state_dir=state, timing=TEST_TIMING, concurrency=2))
    channel = open_channel(f"127.0.0.1:{scorer.port}", 64)
    yield Node(inference, scorer_pb2_grpc.ScorerServiceStub(channel), dataset)
    channel.close()
    for running in (scorer, metrics, inference):
        running.stop(grace=1.0)


@pytest.fixture(scope="module")
def honest_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("honest") / "brighten.pb"
    path.write_bytes(graph_bytes(brighten))
    return path


def submit(node: Node, model: bytes, team: str) -> scorer_pb2.Job:
    # Vetting a model runs it once (a warm-up): for the matmul bomb, up to MAX_RUN_S.
    return node.scorer.SubmitJob(scorer_pb2.SubmitJobRequest(
        track=common_pb2.TRACK_B, graph_def=model, dataset=str(node.dataset), team=team),
        timeout=BOUND_S)


def assert_figures_are_the_models_own(node: Node, job: scorer_pb2.Job, model: Path) -> None:
    """Every image's PSNR and MS-SSIM as the challenge's protocol computes them without our
    services (a plain TensorFlow session, float64 reference metrics)."""
    assert job.state == scorer_pb2.JOB_STATE_SUCCEEDED, job.error
    images = node.scorer.GetJobImages(scorer_pb2.GetJobImagesRequest(job_id=job.job_id),
                                      timeout=10).images
    names = sorted(p.name for p in (node.dataset / "patches" / "iphone").iterdir())
    assert sorted(image.image for image in images) == names
    reference = {r.name: r for r in track_b_figures(model, names, node.dataset / "patches")}
    for image in images:
        assert image.psnr == pytest.approx(reference[image.image].psnr, abs=1e-4)
        assert image.msssim == pytest.approx(reference[image.image].msssim, abs=1e-6)
    assert job.result.psnr == pytest.approx(np.mean([r.psnr for r in reference.values()]),
                                            abs=1e-4)


def seconds(start: Any, end: Any) -> float:
    return float(end.ToNanoseconds() - start.ToNanoseconds()) / 1e9


def test_allocation_bombs_and_a_deep_graph_fail_beside_an_honest_job(
        node: Node, honest_model: Path) -> None:
    """Each bomb is its own team's job; the scorer runs two jobs at once, the inference node
    serves both. A graph 50,000 nodes deep is refused at submission."""
    honest = submit(node, honest_model.read_bytes(), "honest-beside-allocations")
    bombs = {kind: submit(node, graph_bytes(build), f"bomber-{kind}")
             for kind, (build, _) in ALLOCATION_BOMBS.items()}
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        submit(node, chain_graph(50_000), "bomber-deep")
    assert time.monotonic() - start < BOUND_S
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "model has 50,002 nodes; the limit is 10,000" in details, details
    assert "--max-graph-nodes" in details and "PIRM_MAX_GRAPH_NODES" in details
    for kind, job in bombs.items():
        failed = wait_job(node.scorer, job.job_id)
        assert failed.state == scorer_pb2.JOB_STATE_FAILED, (kind, failed)
        op = ALLOCATION_BOMBS[kind][1]
        assert "exceeds the memory limit on an input of shape (1, 100, 100, 3)" in failed.error
        assert f"Node: '{op}' OOM when allocating tensor" in failed.error, (kind, failed.error)
        assert "RunOptions" not in failed.error and "[[" not in failed.error  # TF's debug aids
        assert seconds(failed.started, failed.finished) < BOUND_S, kind
    assert_figures_are_the_models_own(node, wait_job(node.scorer, honest.job_id), honest_model)


def test_a_run_past_the_time_limit_is_stopped_beside_an_honest_job(
        node: Node, honest_model: Path) -> None:
    """Hundreds of matrix products: the run is stopped at MAX_RUN_S (its worker killed), the
    worker restarts and reloads the models its next requests need."""
    restarts = worker_restarts()
    honest = submit(node, honest_model.read_bytes(), "honest-beside-matmuls")
    hostile = submit(node, graph_bytes(endless_matmuls), "bomber-matmuls")
    failed = wait_job(node.scorer, hostile.job_id)
    assert failed.state == scorer_pb2.JOB_STATE_FAILED, failed
    assert (f"model 'sha256-{failed.model_sha256[:16]}' ran longer than {MAX_RUN_S:g} s on an "
            "input of shape (1, 100, 100, 3) and was stopped") in failed.error, failed.error
    assert "--max-run-s" in failed.error and "PIRM_MAX_RUN_S" in failed.error
    assert seconds(failed.started, failed.finished) < BOUND_S
    assert_figures_are_the_models_own(node, wait_job(node.scorer, honest.job_id), honest_model)
    # Two runs stopped (its warm-up at submission, its first image); a restart follows each
    # at the worker's next request, of which the honest job made at least one.
    assert worker_restarts() >= restarts + 1


def worker_restarts() -> float:
    """The inference service's restart counter (its Prometheus registry is in this process)."""
    value = telemetry.REGISTRY.get_sample_value("pirm_inference_worker_restarts_total",
                                                {"device": "cpu"})
    return value or 0.0
