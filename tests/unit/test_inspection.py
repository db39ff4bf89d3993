"""services.inference.inspection and services.inference.mobile on graphs built here with
TensorFlow and on the SRCNN baseline: FLOPs against TensorFlow's own profiler and against
hand-computed figures, parameters from the layer shapes, the allowlist verdict, and LiteRT's
conversion (a failure names the ops) and outputs against TensorFlow's."""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from services.cli.commands.inspect import inspection_report, report_text
from services.core.errors import InvalidArgument
from services.core.timing import FIXED, TimingOptions
from services.core.track import Track
from services.inference.graphs import ALLOWED_OPS, parse_graph
from services.inference.inspection import inspect_graph
from services.inference.mobile import (
    MobileConversionError,
    MobileRequest,
    convert_to_litert,
    estimate_mobile,
    inspect_and_estimate,
)
from services.scorer.protocol import timing_input, timing_input_shape
from services.scorer.samples import srcnn_graph_def
from tests.conftest import DATA
from tests.integration.helpers import chain_graph

v1 = tf.compat.v1
HD = (1280, 720)
Builder = Callable[[Any], Any]


def frozen(body: Builder, shape: list[int | None] | None = None) -> tf.Graph:
    """A graph input -> body -> output; the input [1, None, None, 3] unless `shape` is given."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, shape or [1, None, None, 3], name="input")
        tf.identity(body(x), name="output")
    return graph


def serialized(body: Builder) -> bytes:
    return frozen(body).as_graph_def().SerializeToString()


@pytest.fixture
def data_limit_restored() -> Iterator[None]:
    """inspect_and_estimate caps the data segment of its process, made to be a fresh one: here,
    the test process, where a later test's TensorFlow would then abort (seen under xdist)."""
    saved = resource.getrlimit(resource.RLIMIT_DATA)
    yield
    resource.setrlimit(resource.RLIMIT_DATA, saved)


def profiler_flops_by_op(graph: tf.Graph) -> dict[str, int]:
    """TensorFlow's profiler: float operations per op type (its exclusive counts)."""
    options = (v1.profiler.ProfileOptionBuilder(
        v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build())
    root = v1.profiler.profile(graph, cmd="op", options=options)
    found: dict[str, int] = {}

    def walk(node: Any) -> None:
        for child in node.children:
            if child.float_ops:
                found[child.name] = int(child.float_ops)
            walk(child)

    walk(root)
    return found


def srcnn_bytes() -> bytes:
    """The challenge's SRCNN when the shared data is here, else the generated SRCNN-shaped
    graph (the same layers)."""
    real = DATA / "models_pretrained" / "div2k_srcnn.pb"
    return real.read_bytes() if real.is_file() else srcnn_graph_def()


# -- FLOPs and parameters ------------------------------------------------------------------


def tiny(x: Any) -> Any:
    """3x3 conv 3->4 + BiasAdd + ReLU, 1x1 conv 4->3 + Add(bias), then x2 (not a parameter)."""
    w1 = np.arange(3 * 3 * 3 * 4, dtype=np.float32).reshape(3, 3, 3, 4) / 100
    h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, w1, 1, "SAME"), np.ones(4, np.float32)))
    w2 = np.ones((1, 1, 4, 3), np.float32)
    return (tf.nn.conv2d(h, w2, 1, "VALID") + np.zeros(3, np.float32)) * np.float32(2.0)


def test_tiny_graph_against_hand_computed_figures() -> None:
    data = serialized(tiny)
    found = inspect_graph(data, (5, 4))
    pixels = 4 * 5
    assert found.flops_by_op == {
        "Conv2D": 2 * pixels * 4 * (3 * 3 * 3) + 2 * pixels * 3 * (1 * 1 * 4),
        "BiasAdd": pixels * 4, "Relu": pixels * 4, "AddV2": pixels * 3, "Mul": pixels * 3,
    }
    assert found.flops == 4320 + 480 + 80 + 80 + 60 + 60
    assert found.parameters == 3 * 3 * 3 * 4 + 4 + 4 * 3 + 3
    assert found.parameter_tensors == 4
    assert found.constant_values == found.parameters + 1  # the x2 scalar is no parameter
    graph_def = tf.compat.v1.GraphDef.FromString(data)
    assert found.ops == dict(Counter(node.op for node in graph_def.node))
    assert found.input.declared_shape == (1, -1, -1, 3)
    assert found.input.shape == found.output.shape == (1, 4, 5, 3)
    assert found.accepted and found.refused == () and found.problems == ()


def layers_tensorflow_counts(x: Any) -> Any:
    """Every kind of layer whose FLOPs TensorFlow's profiler also counts."""
    rng = np.random.default_rng(0)

    def weights(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    h = tf.nn.conv2d(x, weights(3, 3, 3, 8), 2, "SAME")  # stride 2
    h = tf.nn.bias_add(h, weights(8))
    h = tf.nn.depthwise_conv2d(h, weights(3, 3, 8, 2), [1, 1, 1, 1], "SAME")  # 16 channels
    h = tf.maximum(h, 0.0) - weights(16)
    h = tf.nn.avg_pool2d(h, 2, 1, "SAME") * tf.nn.max_pool2d(h, 3, 1, "SAME")
    h = tf.nn.conv2d_transpose(h, weights(4, 4, 3, 16), tf.stack([1, 16, 24, 3]), 2, "SAME")
    flat = tf.matmul(tf.reshape(h, [-1, 3]), weights(3, 3))
    h = tf.add_n([tf.reshape(flat, [1, 16, 24, 3]), h, tf.square(h)])
    h = tf.math.squared_difference(h, weights(3))
    return h * tf.math.rsqrt(tf.reduce_mean(tf.square(h)) + 1.0)


def test_flops_match_tensorflow_profiler_per_op_type() -> None:
    reference = profiler_flops_by_op(frozen(layers_tensorflow_counts, [1, 16, 24, 3]))
    assert {"Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "MatMul", "BiasAdd",
            "AvgPool", "MaxPool", "AddN", "Mean", "SquaredDifference", "Rsqrt"} <= set(reference)
    found = inspect_graph(serialized(layers_tensorflow_counts), (24, 16))
    assert {op: found.flops_by_op.get(op) for op in reference} == reference
    assert found.unknown_shape_ops == ()


def test_srcnn_hd_flops_and_parameters() -> None:
    """SRCNN (9x9x3x64, 5x5x64x32, 5x5x32x3) on the 1280x720 timing input: its convolutions
    by hand, the rest against TensorFlow's profiler on the same graph and input shape."""
    data = srcnn_bytes()
    found = inspect_graph(data, HD)
    pixels = 1280 * 720
    macs_per_pixel = 9 * 9 * 3 * 64 + 5 * 5 * 64 * 32 + 5 * 5 * 32 * 3
    assert found.flops_by_op["Conv2D"] == 2 * pixels * macs_per_pixel
    assert found.parameters == macs_per_pixel + 64 + 32 + 1  # the last bias is one value
    assert found.input.shape == found.output.shape == (1, 720, 1280, 3)
    graph = tf.Graph()
    with graph.as_default():
        hd = v1.placeholder(tf.float32, [1, 720, 1280, 3])
        v1.import_graph_def(tf.compat.v1.GraphDef.FromString(data), {"input:0": hd}, name="")
    reference = profiler_flops_by_op(graph)
    assert {op: found.flops_by_op[op] for op in reference} == reference
    # What TensorFlow leaves out: one operation per activation value.
    assert found.flops_by_op["Relu"] == pixels * (64 + 32)
    assert found.flops_by_op["Tanh"] == pixels * 3
    assert found.flops == sum(reference.values()) + pixels * (64 + 32 + 3)


# -- verdict -------------------------------------------------------------------------------


def test_refused_ops_are_listed_with_reasons_and_not_imported() -> None:
    data = serialized(lambda x: x + tf.cast(tf.strings.length(tf.io.read_file("/etc/passwd")),
                                            tf.float32) + v1.py_func(lambda a: a, [x], tf.float32))
    found = inspect_graph(data, HD)
    refused = dict(found.refused)
    assert refused["ReadFile"] == "reads or writes files"
    assert refused["PyFunc"] == "runs Python code"
    assert "StringLength" in refused
    assert not found.accepted
    assert found.flops is None and found.output.shape is None
    # the same ops the inference service refuses
    with pytest.raises(InvalidArgument, match="ReadFile .reads or writes files"):
        parse_graph("m", data)


def test_output_of_another_shape_is_a_problem() -> None:
    found = inspect_graph(serialized(lambda x: v1.image.resize_bilinear(x, [64, 64])), HD)
    assert found.output.shape == (1, 64, 64, 3)
    assert not found.accepted
    assert "differs from the input's [1, 720, 1280, 3]" in found.problems[0]
    assert found.not_counted == ("ResizeBilinear",)


def test_model_fixed_to_another_size_cannot_take_hd() -> None:
    found = inspect_graph(serialized(lambda x: tf.reshape(x, [1, 100, 100, 3]) + 1.0), HD)
    assert not found.accepted
    assert "cannot take a 1280x720 input" in found.problems[0]


def test_missing_output_tensor_is_a_problem() -> None:
    found = inspect_graph(serialized(tiny), HD, output_tensor="result:0")
    assert found.problems == ("model has no output tensor 'result:0': the graph has no node "
                              "'result'. Name the output node 'result' or pass the tensor "
                              "name with the model",)


def test_graph_over_the_node_limit_is_refused_as_the_service_refuses_it() -> None:
    """The verdict of `pirm inspect` and the service's refusal are the same words; the graph is
    not imported for shapes and FLOPs (that alone would take TensorFlow about 15 s)."""
    data = chain_graph(50_000)
    found = inspect_graph(data, HD)
    assert not found.accepted and found.node_count == 50_002
    assert found.flops is None and found.output.shape is None
    with pytest.raises(InvalidArgument) as refusal:
        parse_graph("m", data)
    assert found.problems == (str(refusal.value),)
    assert "the limit is 10,000" in found.problems[0]


def test_not_a_graph_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not a TensorFlow GraphDef"):
        inspect_graph(b"\xff\xfe not a protobuf", HD)


# -- track input shapes --------------------------------------------------------------------


@pytest.mark.parametrize("track", [Track.A, Track.B])
@pytest.mark.parametrize("size", [HD, (1283, 721)])
def test_timing_input_shape_is_what_the_protocol_feeds(
    tmp_path: Path, track: Track, size: tuple[int, int]
) -> None:
    (tmp_path / "HD_res").mkdir()
    Image.new("RGB", size, (10, 20, 30)).save(tmp_path / "HD_res" / "0.png")
    assert timing_input_shape(track, size) == timing_input(track, tmp_path).shape


# -- mobile (LiteRT) -----------------------------------------------------------------------


def resize_area(x: Any) -> Any:
    """ResizeArea is on our allowlist but LiteRT has no built-in kernel for it."""
    return v1.image.resize_area(x, tf.shape(x)[1:3])


def test_op_litert_cannot_convert_is_named() -> None:
    assert "ResizeArea" in ALLOWED_OPS
    graph_def, spec = parse_graph("m", serialized(resize_area))
    with pytest.raises(MobileConversionError) as failed:
        convert_to_litert(graph_def, spec, (1, 8, 8, 3))
    assert failed.value.ops == ("ResizeArea",)
    assert "LiteRT has no built-in kernel for ResizeArea" in str(failed.value)
    assert "Traceback" not in str(failed.value) and "\n" not in str(failed.value)
    estimate = estimate_mobile(serialized(resize_area), (1, 8, 8, 3), threads=1)
    assert estimate.unsupported_ops == ("ResizeArea",) and estimate.litert is None


def test_litert_runs_srcnn_like_tensorflow() -> None:
    options = TimingOptions(warmup_runs=1, min_runs=5, min_seconds=0.0, max_runs=5, protocol=FIXED)
    estimate = estimate_mobile(srcnn_bytes(), (1, 24, 32, 3), threads=1, options=options)
    assert estimate.litert_bytes > 0 and estimate.unsupported_ops == ()
    assert estimate.litert is not None and estimate.tensorflow is not None
    assert estimate.litert.runs == estimate.tensorflow.runs == 5
    assert estimate.litert.min_ms <= estimate.litert.median_ms <= estimate.litert.max_ms
    assert estimate.max_abs_difference < 1e-4  # the same model, not just something that ran


def test_refused_model_is_neither_converted_nor_run() -> None:
    data = serialized(lambda x: x + v1.py_func(lambda a: a, [x], tf.float32))
    found, estimate = inspect_and_estimate(data, (1, 8, 8, 3), ("input:0", "output:0"),
                                           MobileRequest(threads=1))
    assert not found.accepted and estimate is None
    with pytest.raises(InvalidArgument, match="PyFunc"):
        estimate_mobile(data, (1, 8, 8, 3), threads=1)
    text = report_text(inspection_report("hostile.pb", Track.A, found, estimate, mobile=True))
    assert "verdict: REFUSED by the inference service\n  PyFunc: runs Python code" in text
    assert "mobile (LiteRT): not tried: the model is refused" in text
    assert "FLOPs per" not in text  # never imported, so never counted


@pytest.mark.usefixtures("data_limit_restored")
def test_conversion_failure_is_reported_by_op_name() -> None:
    found, estimate = inspect_and_estimate(serialized(resize_area), (1, 8, 8, 3),
                                           ("input:0", "output:0"), MobileRequest(threads=1))
    report = inspection_report("area.pb", Track.B, found, estimate, mobile=True)
    assert report["accepted"] and report["mobile"]["unsupported_ops"] == ["ResizeArea"]
    assert ("mobile (LiteRT): conversion FAILED: LiteRT has no built-in kernel for ResizeArea"
            in report_text(report))
