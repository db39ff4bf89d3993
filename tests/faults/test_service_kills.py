"""Kill -9 of the inference and of the metrics service in the middle of a job, under `pirm up`'s
supervisor (as Kubernetes restarts a pod): the scorer waits for the restarted service, reloads
the model it lost, and the job completes with every image's figures right. A job that runs past
its time limit is stopped and failed, saying so; a server asked to stop lets its in-flight
calls finish within the grace period."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from pirm.v1 import inference_pb2, inference_pb2_grpc, scorer_pb2

from services.client import ScorerClient
from services.common.cluster import free_port, wait_serving
from services.core.channel import open_channel
from services.core.tensors import from_tensor, to_tensor
from services.core.track import Track
from services.scorer.server import ScorerConfig
from services.scorer.server import create_server as create_scorer
from tests.cluster import TEST_TIMING, Cluster, sample_dataset, supervised_cluster
from tests.integration.helpers import is_serving, scrape, slow_graph, total, wait_for
from tests.official import run_graph
from tests.reference import psnr_ref

WAIT_S = 600.0


def test_killed_inference_and_metrics_are_waited_for_and_the_job_completes(
        tmp_path: Path) -> None:
    store = tmp_path / "scorer.db"
    cluster = supervised_cluster(tmp_path)
    cluster.start()
    try:
        dataset = sample_dataset(tmp_path, Track.B, patches_per_photo=3)
        names = sorted(p.name for p in (dataset / "patches" / "iphone").iterdir())
        model = slow_graph()
        with ScorerClient(cluster.target("scorer"), token=cluster.token()) as client:
            job = client.submit(Track.B, model, dataset, team="faults")

            def done_at_least(count: int) -> Callable[[], bool]:
                def check() -> bool:
                    current = client.get(job.job_id)
                    assert current.state != scorer_pb2.JOB_STATE_FAILED, current.error
                    return current.progress.images_done >= count
                return check

            for service, after in (("inference", 2), ("metrics", 5)):
                wait_for(done_at_least(after), f"{after} scored images")
                os.kill(cluster.pid(service), signal.SIGKILL)
                wait_for(lambda s=service: cluster.restarts[s] == 1,  # type: ignore[misc]
                         f"the supervisor's restart of {service}")
            final = client.wait(job.job_id, timeout_s=WAIT_S)
        assert final.state == scorer_pb2.JOB_STATE_SUCCEEDED, final.error
        assert final.result.images == len(names)
        with sqlite3.connect(store) as db:
            stored = db.execute("SELECT image, psnr FROM image_results WHERE job_id = ? "
                                "ORDER BY image", (job.job_id,)).fetchall()
        assert [image for image, _ in stored] == names  # each image once
        # Every figure, before and after the kills, is the model's true PSNR (track B: the
        # output clipped to [0, 1] against the DSLR patch).
        photos = [np.asarray(Image.open(dataset / "patches" / kind / name), np.float32) / 255
                  for kind in ("iphone", "canon") for name in names]
        inputs, targets = photos[:len(names)], photos[len(names):]
        outputs = [output[0] for output in run_graph(model, [x[None] for x in inputs])]
        for (image, psnr), output, target in zip(stored, outputs, targets, strict=True):
            assert psnr == pytest.approx(psnr_ref(np.clip(output, 0, 1), target), abs=1e-4), image
    finally:
        cluster.stop()


def test_job_past_its_time_limit_is_stopped_and_failed(cluster: Cluster, tmp_path: Path
                                                       ) -> None:
    scorer = create_scorer("127.0.0.1:0", ScorerConfig(
        inference=cluster.target(cluster.inference), metrics=cluster.target(cluster.metrics),
        store=tmp_path / "scorer.db", state_dir=tmp_path, timing=TEST_TIMING,
        job_timeout_s=2.0))
    try:
        dataset = sample_dataset(tmp_path, Track.B, patches_per_photo=10)
        with ScorerClient(f"127.0.0.1:{scorer.port}") as client:
            job = client.submit(Track.B, slow_graph(), dataset, team="slow")
            final = client.wait(job.job_id, timeout_s=WAIT_S)
        assert final.state == scorer_pb2.JOB_STATE_FAILED
        assert "longer than its time limit of 2 s" in final.error
        # Stopped at the limit, not at the end of the stage it was in (the timing stage's
        # measuring worker is killed as for a cancel).
        assert final.finished.ToSeconds() - final.started.ToSeconds() < 15
    finally:
        scorer.stop(grace=1.0)


def start_inference_process(port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIRM_")}
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "serve", "inference", "--insecure-dev",
         "--port", str(port), "--metrics-port", str(metrics_port), "--grace-seconds", "60"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_starting_server_is_not_serving_and_stops_cleanly_on_sigterm() -> None:
    # The inference service listens seconds before its TensorFlow worker is up.
    port = free_port()
    server = start_inference_process(port, free_port())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            first = health.Check(health_pb2.HealthCheckRequest(), timeout=120,
                                 wait_for_ready=True).status
            assert first == health_pb2.HealthCheckResponse.NOT_SERVING
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=120) == 0  # handled, not the default action's -15
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_sigterm_drains_in_flight_calls_then_exits(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    server = start_inference_process(port, metrics_port)
    try:
        target = f"127.0.0.1:{port}"
        wait_serving(target)
        channel = open_channel(target, 64)
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        stub.LoadModel(inference_pb2.LoadModelRequest(name="slow", graph_def=slow_graph()),
                       timeout=120)
        # 12 MB each way: the answer's end must reach the client before the connection closes.
        image = np.random.default_rng(0).random((1024, 1024, 3), np.float32)
        outcome: dict[str, object] = {}

        def infer() -> None:
            try:
                response = stub.Infer(inference_pb2.InferRequest(
                    model="slow", input=to_tensor(image)), timeout=120)
                outcome["output"] = from_tensor(response.output, "output")
            except grpc.RpcError as error:
                outcome["error"] = error
            outcome["finished"] = time.monotonic()

        call = threading.Thread(target=infer)
        call.start()
        # SIGTERM once the server handles the call (a request still on its way when the
        # server stops is refused, as it should be): it takes seconds on 1024x1024.
        wait_for(lambda: total(scrape(metrics_port), "grpc_server_requests_in_flight",
                               grpc_method="Infer") == 1, "the Infer call in flight")
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        wait_for(lambda: not is_serving(channel), "health turning NOT_SERVING")
        with pytest.raises(grpc.RpcError) as draining:  # a new call, while the first one runs
            stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
        assert draining.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down: retry the call" in str(draining.value.details())
        call.join(120)
        assert "error" not in outcome, outcome.get("error")
        output = outcome["output"]
        assert isinstance(output, np.ndarray) and output.shape[-3:] == image.shape
        assert outcome["finished"] > signalled  # type: ignore[operator]  # spanned the SIGTERM
        assert server.wait(timeout=60) == 0
        with pytest.raises(grpc.RpcError) as refused:  # and nothing listens any more
            stub.Infer(inference_pb2.InferRequest(model="slow", input=to_tensor(image)),
                       timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
