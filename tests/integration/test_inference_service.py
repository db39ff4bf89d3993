"""The inference service over gRPC: real TensorFlow on real .pb files."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from pirm.v1 import common_pb2, inference_pb2, inference_pb2_grpc

from services.core.channel import open_channel
from services.core.tensors import from_tensor, to_tensor
from services.inference.engine import EngineSettings
from services.inference.server import create_server
from tests.integration.conftest import Cluster
from tests.integration.helpers import graph_bytes, is_serving
from tests.official import run_graph

Stub = inference_pb2_grpc.InferenceServiceStub


def _identity_like(tf: object, x: object) -> None:
    tf.identity(tf.nn.relu(x) * 1.0, name="output")  # type: ignore[attr-defined]


def _load(stub: Stub, name: str, pb: bytes, **kw: str) -> inference_pb2.ModelInfo:
    request = inference_pb2.LoadModelRequest(name=name, graph_def=pb, **kw)
    return stub.LoadModel(request, timeout=60).model


def test_hd_image_round_trip_equals_plain_session(pirm_data: Path, inference_stub: Stub) -> None:
    pb = (pirm_data / "models_pretrained" / "dped_srcnn.pb").read_bytes()
    info = _load(inference_stub, "srcnn-b", pb)
    assert info.node_count > 0 and "Conv2D" in info.ops and len(info.sha256) == 64
    rng = np.random.default_rng(0)
    image = rng.random((1, 720, 1280, 3), dtype=np.float32)  # 11 MB: above gRPC's 4 MiB default
    response = inference_stub.Infer(
        inference_pb2.InferRequest(model="srcnn-b", input=to_tensor(image)), timeout=120
    )
    output = from_tensor(response.output)
    assert output.shape == image.shape and output.dtype == np.float32
    np.testing.assert_allclose(output, run_graph(pb, [image])[0], atol=1e-5)
    assert response.run_ms > 0


def test_uint8_pixels_are_fed_as_value_over_255(pirm_data: Path, inference_stub: Stub) -> None:
    pb = (pirm_data / "models_pretrained" / "dped_srcnn.pb").read_bytes()
    _load(inference_stub, "srcnn-u8", pb)
    pixels = np.random.default_rng(1).integers(0, 256, (1, 180, 320, 3), dtype=np.uint8)
    as_float = pixels.astype(np.float32) / np.float32(255)  # SPEC section 2, step 2

    def infer(image: np.ndarray) -> np.ndarray:
        request = inference_pb2.InferRequest(model="srcnn-u8", input=to_tensor(image))
        return from_tensor(inference_stub.Infer(request, timeout=120).output)

    from_pixels = infer(pixels)
    assert from_pixels.dtype == np.float32 and from_pixels.shape == pixels.shape
    np.testing.assert_array_equal(from_pixels, infer(as_float))  # the same run, bit for bit
    np.testing.assert_allclose(from_pixels, run_graph(pb, [as_float])[0], atol=1e-5)


def test_images_of_changing_sizes_come_back_whole(inference_stub: Stub) -> None:
    # Inputs and outputs cross to the worker through a shared region that grows with the
    # largest image; a smaller one after a larger one must not read a stale tail.
    _load(inference_stub, "relu", graph_bytes(_identity_like))
    rng = np.random.default_rng(2)
    for height, width, dtype in [(8, 8, np.float32), (1356, 2040, np.uint8), (40, 30, np.uint8),
                                 (720, 1280, np.float32), (1400, 2100, np.float32),
                                 (5, 7, np.float32)]:
        image: np.ndarray
        if dtype == np.uint8:
            image = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
            expected = image.astype(np.float32) / np.float32(255)
        else:
            image = rng.standard_normal((1, height, width, 3), dtype=np.float32)
            expected = np.maximum(image, 0)
        request = inference_pb2.InferRequest(model="relu", input=to_tensor(image))
        output = from_tensor(inference_stub.Infer(request, timeout=60).output)
        np.testing.assert_array_equal(output, expected)


def test_benchmark_reports_consistent_statistics(inference_stub: Stub) -> None:
    pb = graph_bytes(_identity_like)
    _load(inference_stub, "tiny", pb)
    image = np.zeros((1, 64, 64, 3), np.float32)
    options = inference_pb2.TimingOptions(warmup_runs=2, min_runs=12, min_seconds=0.05,
                                          max_runs=500)
    timing = inference_stub.Benchmark(
        inference_pb2.BenchmarkRequest(model="tiny", input=to_tensor(image), options=options),
        timeout=60,
    ).timing
    assert timing.runs >= 12 and timing.warmup_runs >= 2  # more while runs still speed up
    assert timing.min_ms <= timing.ci95_low_ms <= timing.median_ms <= timing.ci95_high_ms
    assert timing.median_ms <= timing.p90_ms <= timing.max_ms
    assert timing.device == "cpu" and timing.intra_op_threads >= 1 and timing.node
    assert list(timing.input_shape) == [1, 64, 64, 3]


def test_list_and_unload(inference_stub: Stub) -> None:
    _load(inference_stub, "to-unload", graph_bytes(_identity_like))
    names = [m.name for m in inference_stub.ListModels(inference_pb2.ListModelsRequest()).models]
    assert "to-unload" in names
    inference_stub.UnloadModel(inference_pb2.UnloadModelRequest(name="to-unload"))
    names = [m.name for m in inference_stub.ListModels(inference_pb2.ListModelsRequest()).models]
    assert "to-unload" not in names
    with pytest.raises(grpc.RpcError) as error:
        inference_stub.UnloadModel(inference_pb2.UnloadModelRequest(name="to-unload"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"this is not a graph" * 10, "GraphDef"),
        (b"", "no nodes"),
    ],
)
def test_not_a_graphdef_is_invalid_argument(
    cluster: Cluster, inference_stub: Stub, payload: bytes, expected: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        _load(inference_stub, "garbage", payload)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in error.value.details()
    assert is_serving(cluster.channel(cluster.inference))


def test_graph_without_input_tensor_is_invalid_argument(inference_stub: Stub) -> None:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3], name="image")
        tf.identity(x, name="output")
    with pytest.raises(grpc.RpcError) as error:
        _load(inference_stub, "no-input", graph.as_graph_def().SerializeToString())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'input:0'" in error.value.details()
    # The same graph loads when its tensor names are given.
    info = _load(inference_stub, "named", graph.as_graph_def().SerializeToString(),
                 input_tensor="image:0")
    assert info.input_tensor == "image:0"


def test_output_of_wrong_shape_is_invalid_argument(inference_stub: Stub) -> None:
    pb = graph_bytes(lambda tf, x: tf.identity(x[:, ::2, ::2, :], name="output"))
    _load(inference_stub, "half", pb)
    image = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(grpc.RpcError) as error:
        inference_stub.Infer(inference_pb2.InferRequest(model="half", input=to_tensor(image)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(1, 16, 16, 3)" in error.value.details() and "input's shape" in error.value.details()


def test_bad_requests_get_clear_statuses(inference_stub: Stub) -> None:
    image = to_tensor(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(grpc.RpcError) as error:
        inference_stub.Infer(inference_pb2.InferRequest(model="never-loaded", input=image))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    _load(inference_stub, "tiny2", graph_bytes(_identity_like))
    broken = common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[1, 8, 8, 3],
                               content=b"\0" * 10)
    with pytest.raises(grpc.RpcError) as error:
        inference_stub.Infer(inference_pb2.InferRequest(model="tiny2", input=broken))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 768 bytes" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        inference_stub.Infer(inference_pb2.InferRequest(
            model="tiny2", input=image, device=common_pb2.DEVICE_GPU))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no GPU" in error.value.details()


def test_model_repository(tmp_path: Path) -> None:
    pb = graph_bytes(_identity_like)
    for version in ("1", "2", "10"):
        (tmp_path / "enhancer" / version).mkdir(parents=True)
        (tmp_path / "enhancer" / version / "model.pb").write_bytes(pb)
    running = create_server("127.0.0.1:0", EngineSettings(repository=tmp_path))
    try:
        stub = Stub(open_channel(f"127.0.0.1:{running.port}", 64))
        model = stub.LoadModel(inference_pb2.LoadModelRequest(
            repository=inference_pb2.RepositoryModel(name="enhancer"))).model
        assert model.name == "enhancer" and model.size_bytes == len(pb)
        for name in ("../enhancer", "enhancer/1"):
            with pytest.raises(grpc.RpcError) as error:
                stub.LoadModel(inference_pb2.LoadModelRequest(
                    repository=inference_pb2.RepositoryModel(name=name)))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as error:
            stub.LoadModel(inference_pb2.LoadModelRequest(
                repository=inference_pb2.RepositoryModel(name="enhancer", version="7")))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        running.stop(grace=0.5)


def test_interleaved_comparison_gives_the_speed_ratio(inference_stub: Stub) -> None:
    """A model doing 16x the work of the baseline is slower; the ratio is baseline/model."""
    _load(inference_stub, "light", graph_bytes(_identity_like))

    _load(inference_stub, "heavy", graph_bytes(_heavy))
    image = np.random.default_rng(0).random((1, 256, 256, 3), dtype=np.float32)
    response = inference_stub.Benchmark(inference_pb2.BenchmarkRequest(
        model="heavy", baseline_model="light", input=to_tensor(image),
        options=inference_pb2.TimingOptions(warmup_runs=2, min_runs=15, min_seconds=0.1,
                                            protocol=inference_pb2.TIMING_PROTOCOL_FIXED)),
        timeout=120)
    assert response.timing.runs == response.baseline_timing.runs >= 15
    assert (response.stopping.protocol, response.stopping.reason) == ("fixed", "fixed")
    ratio = response.baseline_timing.median_ms / response.timing.median_ms
    assert response.speed_ratio == pytest.approx(ratio)
    assert response.speed_ratio_ci95_low <= response.speed_ratio <= response.speed_ratio_ci95_high
    assert response.speed_ratio < 1.0  # the heavy model is the slower one


def _heavy(tf: object, x: object) -> None:
    """About 16x the work of _identity_like (a tiled copy of its input, reduced)."""
    big = tf.tile(x, [1, 4, 4, 1])  # type: ignore[attr-defined]
    tf.identity(x + tf.reduce_mean(tf.sqrt(big + 1.0)) * 0.0,  # type: ignore[attr-defined]
                name="output")


def test_sequential_comparison_pairs_blocks_of_the_faster_side(inference_stub: Stub) -> None:
    """The default protocol: a model much faster than the baseline runs in blocks against one
    baseline run; the stopping figures say how many pairs and why it stopped; the interval
    holds the ratio."""
    _load(inference_stub, "seq-light", graph_bytes(_identity_like))
    _load(inference_stub, "seq-heavy", graph_bytes(_heavy))
    image = np.random.default_rng(1).random((1, 512, 512, 3), dtype=np.float32)
    response = inference_stub.Benchmark(inference_pb2.BenchmarkRequest(
        model="seq-light", baseline_model="seq-heavy", input=to_tensor(image),
        options=inference_pb2.TimingOptions(warmup_runs=2, max_runs=30, ratio_width=0.05)),
        timeout=300)
    stopping = response.stopping
    assert stopping.protocol == "sequential" and stopping.reason in ("width", "max_pairs")
    assert 6 <= stopping.pairs <= 30
    assert stopping.baseline_block == 1 and stopping.solution_block > 1  # light is faster
    assert response.baseline_timing.runs == stopping.pairs
    # Blocks sized from the latest warm-up runs: the block's size is fixed after them.
    assert response.timing.runs == stopping.pairs * stopping.solution_block
    low, high = response.speed_ratio_ci95_low, response.speed_ratio_ci95_high
    assert low <= response.speed_ratio <= high and response.speed_ratio > 1.0
    assert stopping.width == pytest.approx((high - low) / (high + low))
    if stopping.reason == "width":
        assert stopping.width <= 0.05


def test_an_explicit_zero_in_timing_options_means_zero(inference_stub: Stub) -> None:
    """Each option given as 0 is 0 (before: read as unset, so the default); unset keeps the
    default."""
    _load(inference_stub, "zero-light", graph_bytes(_identity_like))
    _load(inference_stub, "zero-heavy", graph_bytes(_heavy))
    image = np.zeros((1, 64, 64, 3), np.float32)
    fixed = inference_pb2.TIMING_PROTOCOL_FIXED
    alone = inference_stub.Benchmark(inference_pb2.BenchmarkRequest(
        model="zero-light", input=to_tensor(image), options=inference_pb2.TimingOptions(
            warmup_runs=0, min_runs=1, min_seconds=0.0, max_runs=1, protocol=fixed)),
        timeout=120).timing
    assert (alone.warmup_runs, alone.runs) == (0, 1)  # the defaults: >= 3 and >= 10
    defaults = inference_stub.Benchmark(inference_pb2.BenchmarkRequest(
        model="zero-light", input=to_tensor(image),
        options=inference_pb2.TimingOptions(min_seconds=0.0, protocol=fixed)),
        timeout=120).timing
    assert defaults.warmup_runs >= 3 and defaults.runs == 10
    # A width of 0 is never reached: the comparison runs max_runs pairs, without warm-up.
    compared = inference_stub.Benchmark(inference_pb2.BenchmarkRequest(
        model="zero-light", baseline_model="zero-heavy", input=to_tensor(image),
        options=inference_pb2.TimingOptions(warmup_runs=0, ratio_width=0.0, max_runs=7)),
        timeout=120)
    assert (compared.stopping.pairs, compared.stopping.reason) == (7, "max_pairs")
    assert compared.timing.warmup_runs == compared.baseline_timing.warmup_runs == 0
    with pytest.raises(grpc.RpcError) as caught:
        inference_stub.Benchmark(inference_pb2.BenchmarkRequest(
            model="zero-light", baseline_model="zero-heavy", input=to_tensor(image),
            options=inference_pb2.TimingOptions(min_pairs=0)), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "min_pairs" in (caught.value.details() or "")


def test_hostile_ops_are_refused_before_import(cluster: Cluster, inference_stub: Stub,
                                               tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("team B's results")
    reader = graph_bytes(lambda tf, x: tf.identity(
        x + tf.cast(tf.strings.length(tf.io.read_file(str(secret))), tf.float32) * 0.0,
        name="output"))
    with pytest.raises(grpc.RpcError) as error:
        _load(inference_stub, "reader", reader)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ReadFile" in error.value.details()

    def python_op(tf: object, x: object) -> None:
        y = tf.compat.v1.py_func(lambda a: a, [x], tf.float32)  # type: ignore[attr-defined]
        tf.identity(y, name="output")  # type: ignore[attr-defined]

    with pytest.raises(grpc.RpcError) as error:
        _load(inference_stub, "python", graph_bytes(python_op))
    assert "PyFunc" in error.value.details()
    assert is_serving(cluster.channel(cluster.inference))


def test_oversized_model_is_refused_before_parsing(tmp_path: Path) -> None:
    running = create_server("127.0.0.1:0", EngineSettings(max_model_bytes=1024))
    try:
        stub = Stub(open_channel(f"127.0.0.1:{running.port}", 64))
        with pytest.raises(grpc.RpcError) as error:
            _load(stub, "big", b"\0" * 4096)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "model file is 4,096 bytes" in error.value.details()
        assert "the limit is 1,024 bytes" in error.value.details()
    finally:
        running.stop(grace=0.5)
