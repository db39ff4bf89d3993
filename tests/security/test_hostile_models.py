"""A corpus of hostile frozen graphs, built here with TensorFlow, against real servers: each is
refused or fails with a message naming the problem, the file system is untouched, and the
service keeps serving the next, honest model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from pirm.v1 import common_pb2, inference_pb2, inference_pb2_grpc, scorer_pb2, scorer_pb2_grpc

from services.common.server import RunningServer
from services.core.channel import open_channel
from services.core.limits import MIB
from services.core.tensors import from_tensor, to_tensor
from services.core.track import Track
from services.inference.engine import EngineSettings
from services.inference.server import create_server as create_inference
from services.scorer.samples import srcnn_graph_def
from tests.cluster import sample_dataset
from tests.integration.helpers import graph_bytes, is_serving, wait_job

Stub = inference_pb2_grpc.InferenceServiceStub
MEMORY_LIMIT_MB = 256  # the worker may then add 4x: 1 GiB


@pytest.fixture(scope="module")
def small_node() -> Iterator[tuple[RunningServer, Stub]]:
    """An inference server whose workers may add 1 GiB: a 2 GiB allocation must fail inside
    TensorFlow (without the cap it would succeed, so the test tells the two apart)."""
    settings = EngineSettings(memory_limit_bytes=MEMORY_LIMIT_MB * MIB)
    server = create_inference("127.0.0.1:0", settings)
    channel = open_channel(f"127.0.0.1:{server.port}", 64)
    yield server, inference_pb2_grpc.InferenceServiceStub(channel)
    channel.close()
    server.stop(grace=1.0)


def load(stub: Stub, name: str, graph: bytes) -> inference_pb2.LoadModelResponse:
    return stub.LoadModel(inference_pb2.LoadModelRequest(name=name, graph_def=graph), timeout=120)


def refused_load(stub: Stub, graph: bytes) -> str:
    with pytest.raises(grpc.RpcError) as error:
        load(stub, "hostile", graph)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(error.value.details())


def infer(stub: Stub, name: str, shape: tuple[int, ...] = (1, 32, 32, 3)) -> np.ndarray:
    request = inference_pb2.InferRequest(model=name, input=to_tensor(np.full(shape, 0.5,
                                                                             np.float32)))
    return from_tensor(stub.Infer(request, timeout=120).output, "output")


def assert_still_serving(server: RunningServer, stub: Stub) -> None:
    """Health says SERVING and an honest model loads and runs."""
    with open_channel(f"127.0.0.1:{server.port}", 64) as channel:
        assert is_serving(channel)
    load(stub, "honest", srcnn_graph_def(seed=11))
    assert infer(stub, "honest").shape == (1, 32, 32, 3)


def test_file_ops_are_refused_and_touch_nothing(small_node: tuple[RunningServer, Stub],
                                                tmp_path: Path) -> None:
    server, stub = small_node
    canary = tmp_path / "written-by-a-model"
    writer = graph_bytes(lambda tf, x: (tf.io.write_file(str(canary), "pwned"),
                                        tf.identity(x, name="output")))
    reader = graph_bytes(lambda tf, x: (tf.io.read_file("/etc/hostname"),
                                        tf.identity(x, name="output")))
    assert "WriteFile" in refused_load(stub, writer)
    assert "ReadFile" in refused_load(stub, reader)
    assert not canary.exists()
    assert_still_serving(server, stub)


def test_python_and_hidden_function_ops_are_refused(small_node: tuple[RunningServer, Stub]
                                                    ) -> None:
    server, stub = small_node

    def python_op(tf: object, x: object) -> None:
        y = tf.compat.v1.py_func(lambda a: a, [x], tf.float32)  # type: ignore[attr-defined]
        tf.identity(y, name="output")  # type: ignore[attr-defined]

    def hidden_in_function(tf: object, x: object) -> None:
        @tf.function  # type: ignore[attr-defined]
        def sneaky(a: object) -> object:
            tf.io.write_file("/tmp/pirm-sneaky", "x")  # type: ignore[attr-defined]
            return a

        tf.identity(sneaky(x), name="output")  # type: ignore[attr-defined]

    assert "PyFunc" in refused_load(stub, graph_bytes(python_op))
    assert "function" in refused_load(stub, graph_bytes(hidden_in_function)).lower()
    assert not Path("/tmp/pirm-sneaky").exists()
    assert_still_serving(server, stub)


def test_endless_loop_is_refused(small_node: tuple[RunningServer, Stub]) -> None:
    """Control flow is not among the allowed ops, so a graph cannot loop forever: neither a
    TF2 loop (a While op with its body in a function library) nor a TF1 loop (Enter, Merge,
    LoopCond, NextIteration ... nodes in the graph itself)."""
    import tensorflow as tf

    server, stub = small_node

    def endless(tf: object, x: object) -> None:
        count = tf.while_loop(lambda i: i >= 0, lambda i: i + 1, [0])  # type: ignore[attr-defined]
        tf.identity(x + tf.cast(count, tf.float32) * 0, name="output")  # type: ignore[attr-defined]

    assert "function library" in refused_load(stub, graph_bytes(endless))
    tf.compat.v1.disable_control_flow_v2()
    try:
        tf1_loop = graph_bytes(endless)
    finally:
        tf.compat.v1.enable_control_flow_v2()
    details = refused_load(stub, tf1_loop)
    assert "not allowed" in details and "LoopCond" in details
    assert_still_serving(server, stub)


def test_huge_allocation_fails_inside_the_worker(small_node: tuple[RunningServer, Stub]) -> None:
    """A model that tiles a 32x32 input into 1.6 GiB: the worker's memory cap (1 GiB here)
    makes the allocation fail with a message, instead of the model taking the node's memory
    (without the cap, 1.6 GiB would simply be allocated)."""
    server, stub = small_node
    hog = graph_bytes(lambda tf, x: tf.identity(
        x + tf.reduce_sum(tf.tile(x, [1, 256, 512, 1])) * 0, name="output"))
    load(stub, "hog", hog)  # loads; its warm-up fails, so it never becomes ready
    with pytest.raises(grpc.RpcError) as error:
        infer(stub, "hog")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details() or ""
    assert "hog" in details and ("memory" in details or "OOM" in details
                                 or "crashed its inference worker" in details), details
    assert_still_serving(server, stub)


def test_nan_output_fails_its_job_with_the_reason(scorer_stub: scorer_pb2_grpc.ScorerServiceStub,
                                                  tmp_path: Path) -> None:
    dataset = sample_dataset(tmp_path, Track.B, patches_per_photo=1)
    nan_model = graph_bytes(lambda tf, x: tf.identity(x + float("nan"), name="output"))
    job = scorer_stub.SubmitJob(scorer_pb2.SubmitJobRequest(
        track=common_pb2.TRACK_B, graph_def=nan_model, dataset=str(dataset), team="nan"),
        timeout=60)
    final = wait_job(scorer_stub, job.job_id)
    assert final.state == scorer_pb2.JOB_STATE_FAILED
    assert "NaN" in final.error, final.error
