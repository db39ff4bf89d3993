"""Small helpers of the integration tests: test graphs built with TensorFlow, job waiting."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference import open_inference_pb2 as oip
from inference import open_inference_pb2_grpc as oip_grpc
from pirm.v1 import scorer_pb2, scorer_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.client import FINAL_STATES
from services.core.channel import ChannelSecurity, open_channel

Samples = dict[str, list[tuple[dict[str, str], float]]]


def graph_bytes(build: object) -> bytes:
    """Serialises the graph that `build(tf, x)` makes from a [1, H, W, 3] input placeholder."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3], name="input")
        build(tf, x)
    return bytes(graph.as_graph_def().SerializeToString())


def slow_graph() -> bytes:
    """A model that takes a good fraction of a second per 100x100 patch (64-channel 3x3
    convolutions) and returns an image of its input's shape: jobs that stay RUNNING long
    enough to be cancelled or interrupted."""
    import numpy as np

    def build(tf: object, x: object) -> None:
        rng = np.random.default_rng(0)
        y = x
        channels = [3, 64, 64, 64, 64, 64, 64, 3]
        for c_in, c_out in zip(channels, channels[1:], strict=False):
            w = (rng.standard_normal((3, 3, c_in, c_out)) * 0.05).astype(np.float32)
            y = tf.nn.conv2d(y, tf.constant(w), strides=1, padding="SAME")  # type: ignore[attr-defined]
        # Nearly the input: quality figures stay well defined (no anti-correlated output).
        tf.identity(x + 0.01 * tf.tanh(y), name="output")  # type: ignore[attr-defined]

    return graph_bytes(build)


def chain_graph(length: int) -> bytes:
    """A frozen graph of `length` element-wise nodes in one chain (Neg, Tanh, Neg ...) from
    input to output: as deep as a graph of its size can be. Written as a GraphDef directly:
    TensorFlow's Python graph builder takes about a minute for 50,000 ops."""
    from tensorflow.core.framework import graph_pb2, types_pb2

    graph = graph_pb2.GraphDef()
    source = graph.node.add(name="input", op="Placeholder")
    source.attr["dtype"].type = types_pb2.DT_FLOAT
    for size in (1, -1, -1, 3):
        source.attr["shape"].shape.dim.add(size=size)
    previous = source.name
    for index in range(length):
        node = graph.node.add(name=f"n{index}", op=("Neg", "Tanh")[index % 2], input=[previous])
        node.attr["T"].type = types_pb2.DT_FLOAT
        previous = node.name
    output = graph.node.add(name="output", op="Identity", input=[previous])
    output.attr["T"].type = types_pb2.DT_FLOAT
    return bytes(graph.SerializeToString())


def inferences_of(target: str, model: str, token: str | None = None) -> int:
    """How many requests the inference service at `target` ran for `model` (Triton's
    statistics extension of the Open Inference Protocol)."""
    with open_channel(target, 64, ChannelSecurity(token)) as channel:
        stats = oip_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            oip.ModelStatisticsRequest(name=model), timeout=10)
    return sum(s.inference_count for s in stats.model_stats)


def wait_job(stub: scorer_pb2_grpc.ScorerServiceStub, job_id: str,
             timeout_s: float = 600) -> scorer_pb2.Job:
    updates = list(stub.WatchJob(scorer_pb2.GetJobRequest(job_id=job_id), timeout=timeout_s))
    job = updates[-1]
    assert job.state in FINAL_STATES
    return job


def is_serving(channel: grpc.Channel) -> bool:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=5)
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 600.0) -> None:
    """Polls `condition` until it holds; fails the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def scrape(port: int) -> Samples:
    """The Prometheus samples a service's /metrics endpoint serves, by sample name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(value for sample_labels, value in samples[name]
               if labels.items() <= sample_labels.items())
