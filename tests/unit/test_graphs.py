"""services.inference.graphs.parse_graph on graphs built here with TensorFlow, the model
repository layout, and the wire tensors of services.core.tensors."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from pirm.v1 import common_pb2

from services.core.errors import InvalidArgument, NotFound
from services.core.limits import DEFAULT_MAX_MODEL_BYTES
from services.core.tensors import from_tensor, to_tensor
from services.inference.graphs import DEFAULT_MAX_GRAPH_NODES, parse_graph, repository_path
from services.scorer.samples import srcnn_graph_def
from tests.conftest import DATA
from tests.integration.helpers import chain_graph, graph_bytes

v1 = tf.compat.v1


def conv_graph(input_name: str = "input", output_name: str = "output") -> Any:
    """A tiny SRCNN-shaped frozen graph: 3x3 conv, bias, ReLU, 3x3 conv, clip."""
    graph = tf.Graph()
    rng = np.random.default_rng(0)
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, None, None, 3], name=input_name)
        w1 = tf.constant(rng.normal(size=(3, 3, 3, 4)).astype(np.float32))
        b1 = tf.constant(np.zeros(4, np.float32))
        h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, w1, strides=1, padding="SAME"), b1))
        w2 = tf.constant(rng.normal(size=(3, 3, 4, 3)).astype(np.float32))
        y = tf.clip_by_value(tf.nn.conv2d(h, w2, strides=1, padding="SAME"), 0.0, 1.0)
        tf.identity(y, name=output_name)
    return graph.as_graph_def()


def graph_with(extra: Callable[[Any], object]) -> Any:
    """The conv graph plus whatever `extra(input_tensor)` adds."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, None, None, 3], name="input")
        extra(x)
        tf.identity(x * 2.0, name="output")
    return graph.as_graph_def()


def raises_invalid(data: bytes, *fragments: str, **kwargs: Any) -> str:
    with pytest.raises(InvalidArgument) as info:
        parse_graph("model", data, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# --------------------------------------------------------------------------------------------
# valid graphs
# --------------------------------------------------------------------------------------------


def test_valid_conv_graph() -> None:
    graph_def = conv_graph()
    data = graph_def.SerializeToString()
    parsed, spec = parse_graph("srcnn-tiny", data)
    assert spec.name == "srcnn-tiny"
    assert spec.sha256 == hashlib.sha256(data).hexdigest()
    assert spec.size_bytes == len(data)
    assert spec.input_tensor == "input:0"
    assert spec.output_tensor == "output:0"
    assert spec.node_count == len(graph_def.node)
    expected_ops = sorted({node.op for node in graph_def.node})
    assert list(spec.ops) == expected_ops
    assert {"Placeholder", "Conv2D", "Const", "Identity", "Relu"} <= set(spec.ops)
    assert parsed == graph_def


def test_parsed_graph_runs_in_tensorflow() -> None:
    """What parse_graph returns is a GraphDef TensorFlow imports and runs."""
    data = conv_graph().SerializeToString()
    parsed, spec = parse_graph("m", data)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(parsed, name="")
    image = np.random.default_rng(1).random((1, 9, 7, 3), dtype=np.float32)
    with v1.Session(graph=graph) as session:
        out = session.run(spec.output_tensor, {spec.input_tensor: image})
    assert out.shape == (1, 9, 7, 3)


def test_custom_tensor_names() -> None:
    data = conv_graph("lr_image", "sr_image").SerializeToString()
    raises_invalid(data, "'input'")  # the default names are absent
    _, spec = parse_graph("m", data, input_tensor="lr_image:0", output_tensor="sr_image:0")
    assert (spec.input_tensor, spec.output_tensor) == ("lr_image:0", "sr_image:0")


def test_size_limit() -> None:
    data = conv_graph().SerializeToString()
    raises_invalid(data, "MiB", max_bytes=len(data) - 1)
    raises_invalid(data, max_bytes=16)
    _, spec = parse_graph("m", data, max_bytes=len(data))  # exactly at the limit
    assert spec.size_bytes == len(data)


def test_default_size_limit_is_100_mib() -> None:
    assert DEFAULT_MAX_MODEL_BYTES == 100 * 1024 * 1024


def test_node_limit() -> None:
    graph_def = conv_graph()
    nodes, data = len(graph_def.node), graph_def.SerializeToString()
    _, spec = parse_graph("m", data, max_nodes=nodes)  # exactly at the limit
    assert spec.node_count == nodes
    raises_invalid(data, f"model has {nodes} nodes; the limit is {nodes - 1}",
                   "--max-graph-nodes", "PIRM_MAX_GRAPH_NODES", max_nodes=nodes - 1)


def test_a_graph_tens_of_thousands_of_nodes_deep_is_refused_by_default() -> None:
    """Such a graph takes TensorFlow 15-30 s to import at every worker start (and 100,000
    nodes crash the worker at every run): it is refused before TensorFlow sees it."""
    raises_invalid(chain_graph(50_000), "model has 50,002 nodes; the limit is 10,000")
    parse_graph("m", chain_graph(DEFAULT_MAX_GRAPH_NODES - 2))  # input + chain + output


def vdsr_shaped(tf: Any, x: Any) -> None:
    """VDSR as SPEC.md section 8 describes it (random weights): 20 convolutions on the grey
    image, the refined grey added back to the colour input."""
    rng = np.random.default_rng(0)
    grey = tf.image.rgb_to_grayscale(x)
    y, channels = grey, [1] + [64] * 19 + [1]
    for layer, (c_in, c_out) in enumerate(zip(channels, channels[1:], strict=False)):
        w = rng.normal(0, 0.03, (3, 3, c_in, c_out)).astype(np.float32)
        y = tf.nn.conv2d(y, w, 1, "SAME") + np.zeros(c_out, np.float32)
        y = tf.nn.relu(y) if layer < len(channels) - 2 else y
    tf.identity(x - tf.concat([grey] * 3, 3) + tf.concat([grey + y] * 3, 3), name="output")


def dped_resnet_shaped(tf: Any, x: Any) -> None:
    """DPED's ResNet 12_64 as SPEC.md section 8 describes it (random weights), with its
    instance normalisations written out as a frozen TF1 graph has them."""
    rng = np.random.default_rng(0)

    def conv(y: Any, size: int, c_in: int, c_out: int) -> Any:
        w = rng.normal(0, 0.03, (size, size, c_in, c_out)).astype(np.float32)
        return tf.nn.conv2d(y, w, 1, "SAME") + np.zeros(c_out, np.float32)

    def instance_norm(y: Any) -> Any:
        mean, variance = tf.nn.moments(y, [1, 2], keepdims=True)
        shift, scale = np.zeros(64, np.float32), np.ones(64, np.float32)
        return scale * (y - mean) / tf.sqrt(variance + 1e-3) + shift

    y = tf.nn.relu(conv(x, 9, 3, 64))
    for _ in range(4):
        z = tf.nn.relu(instance_norm(conv(y, 3, 64, 64)))
        y = y + tf.nn.relu(instance_norm(conv(z, 3, 64, 64)))
    for _ in range(2):
        y = tf.nn.relu(conv(y, 3, 64, 64))
    tf.identity(tf.tanh(conv(y, 9, 64, 3)) * 0.58 + 0.5, name="output")


def test_the_challenges_models_are_far_below_the_node_limit() -> None:
    models = {"srcnn": srcnn_graph_def(), "vdsr": graph_bytes(vdsr_shaped),
              "dped_resnet_12_64": graph_bytes(dped_resnet_shaped)}
    real = [DATA / "models_pretrained" / f"{name}_srcnn.pb" for name in ("div2k", "dped")]
    models.update({path.stem: path.read_bytes() for path in real if path.is_file()})
    for name, data in models.items():
        _, spec = parse_graph(name, data)
        assert spec.node_count * 20 < DEFAULT_MAX_GRAPH_NODES, (name, spec.node_count)


def test_a_name_is_required() -> None:
    with pytest.raises(InvalidArgument):
        parse_graph("", conv_graph().SerializeToString())


# --------------------------------------------------------------------------------------------
# not a graph
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"\xff" * 100, np.random.default_rng(42).bytes(4096), b"\x0a\xff\xff\xff\xff\x0f"],
    ids=["ff", "random-4k", "huge-length"],
)
def test_garbage_is_not_a_graphdef(data: bytes) -> None:
    raises_invalid(data, "GraphDef")


def test_many_random_byte_strings_are_rejected() -> None:
    rng = np.random.default_rng(2018)
    for _ in range(200):
        data = rng.bytes(int(rng.integers(1, 300)))
        with pytest.raises(InvalidArgument):
            parse_graph("m", data)


def test_empty_bytes() -> None:
    raises_invalid(b"", "no nodes")


def test_text_format_graph_is_rejected() -> None:
    text = str(conv_graph()).encode()  # a .pbtxt instead of a binary .pb
    raises_invalid(text)


# --------------------------------------------------------------------------------------------
# tensor names
# --------------------------------------------------------------------------------------------


def test_missing_input_node() -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, None, None, 3], name="image")
        tf.identity(x, name="output")
    raises_invalid(graph.as_graph_def().SerializeToString(), "'input'")


def test_missing_output_node() -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, None, None, 3], name="input")
        tf.identity(x, name="result")
    raises_invalid(graph.as_graph_def().SerializeToString(), "'output'")


def test_missing_custom_tensor_is_named() -> None:
    data = conv_graph().SerializeToString()
    raises_invalid(data, "'nothere'", input_tensor="nothere:0")
    raises_invalid(data, "'gone'", output_tensor="gone:0")


# --------------------------------------------------------------------------------------------
# refused ops and function libraries
# --------------------------------------------------------------------------------------------


def test_read_file_op_is_refused() -> None:
    graph_def = graph_with(lambda x: tf.io.read_file("/etc/passwd"))
    assert "ReadFile" in {n.op for n in graph_def.node}
    raises_invalid(graph_def.SerializeToString(), "ReadFile")


def test_write_file_op_is_refused() -> None:
    graph_def = graph_with(lambda x: tf.io.write_file("/tmp/pwned", "data"))
    assert "WriteFile" in {n.op for n in graph_def.node}
    raises_invalid(graph_def.SerializeToString(), "WriteFile")


def test_py_func_is_refused() -> None:
    graph_def = graph_with(lambda x: v1.py_func(lambda a: a, [x], tf.float32))
    assert "PyFunc" in {n.op for n in graph_def.node}
    raises_invalid(graph_def.SerializeToString(), "PyFunc")


def test_refused_op_checked_before_names() -> None:
    """A hostile graph is refused for its ops even when its tensor names are also wrong."""
    graph = tf.Graph()
    with graph.as_default():
        tf.io.read_file("/etc/shadow", name="reader")
    raises_invalid(graph.as_graph_def().SerializeToString(), "ReadFile")


def test_function_library_is_refused() -> None:
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def double(a: tf.Tensor) -> tf.Tensor:
        return a * 2.0

    function_def = double.get_concrete_function().function_def
    graph_def = conv_graph()
    graph_def.library.function.add().CopyFrom(function_def)
    assert len(graph_def.library.function) == 1
    raises_invalid(graph_def.SerializeToString(), "function library")


def test_gradient_library_is_refused() -> None:
    graph_def = conv_graph()
    graph_def.library.gradient.add(function_name="f", gradient_func="g")
    raises_invalid(graph_def.SerializeToString(), "function library")


def test_partitioned_call_graph_is_refused() -> None:
    """A graph calling a tf.function carries the function in its library."""

    @tf.function
    def inner(a: tf.Tensor) -> tf.Tensor:
        return a + 1.0

    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, None, None, 3], name="input")
        tf.identity(inner(x), name="output")
    graph_def = graph.as_graph_def()
    assert len(graph_def.library.function) >= 1
    raises_invalid(graph_def.SerializeToString())


# --------------------------------------------------------------------------------------------
# repository
# --------------------------------------------------------------------------------------------


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    for version in ("1", "2", "10", "9"):
        path = tmp_path / "srcnn" / version / "model.pb"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"v" + version.encode())
    (tmp_path / "srcnn" / "latest").mkdir()  # not numeric: ignored
    (tmp_path / "srcnn" / "latest" / "model.pb").write_bytes(b"latest")
    (tmp_path / "empty").mkdir()
    (tmp_path / "noversion" / "3").mkdir(parents=True)
    return tmp_path


def test_repository_highest_numeric_version(repository: Path) -> None:
    assert repository_path(repository, "srcnn", "") == repository / "srcnn" / "10" / "model.pb"


def test_repository_explicit_version(repository: Path) -> None:
    assert repository_path(repository, "srcnn", "2") == repository / "srcnn" / "2" / "model.pb"
    assert (repository_path(repository, "srcnn", "latest")
            == repository / "srcnn" / "latest" / "model.pb")


@pytest.mark.parametrize(
    ("name", "version"),
    [("..", ""), ("..", "1"), ("../srcnn", "1"), ("srcnn", ".."), ("srcnn", "../1"),
     ("a/b", ""), ("srcnn/10", ""), ("/etc", ""), ("srcnn", "1/../2"), ("", ""),
     (".hidden", "1"), ("srcnn", "1\\..\\2")],
)
def test_repository_rejects_path_like_names(repository: Path, name: str, version: str) -> None:
    with pytest.raises(InvalidArgument):
        repository_path(repository, name, version)


@pytest.mark.parametrize(
    ("name", "version"),
    [("missing", ""), ("missing", "1"), ("empty", ""), ("srcnn", "3"), ("noversion", "")],
)
def test_repository_missing_model(repository: Path, name: str, version: str) -> None:
    with pytest.raises(NotFound):
        repository_path(repository, name, version)


def test_no_repository_configured() -> None:
    with pytest.raises(NotFound):
        repository_path(None, "srcnn", "1")


# --------------------------------------------------------------------------------------------
# wire tensors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.float32, common_pb2.DATA_TYPE_FLOAT32), (np.uint8, common_pb2.DATA_TYPE_UINT8),
     (np.float64, common_pb2.DATA_TYPE_FLOAT64)],
)
@pytest.mark.parametrize("shape", [(1, 5, 7, 3), (4,), (), (0, 3)])
def test_tensor_round_trip(dtype: type, code: int, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    array: np.ndarray = (rng.random(shape) * 255).astype(dtype)
    message = to_tensor(array)
    assert message.dtype == code
    assert list(message.shape) == list(shape)
    assert message.content == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    # through the wire format and back
    received = common_pb2.Tensor.FromString(message.SerializeToString())
    back = from_tensor(received)
    assert back.dtype == np.dtype(dtype)
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_tensor_big_endian_and_non_contiguous_input() -> None:
    array = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    back = from_tensor(to_tensor(array))
    np.testing.assert_array_equal(back, array)
    assert back.dtype == np.dtype("<f4")
    sliced = np.arange(60, dtype=np.float64).reshape(5, 12)[:, ::3]
    np.testing.assert_array_equal(from_tensor(to_tensor(sliced)), sliced)


def test_tensor_content_is_little_endian() -> None:
    message = to_tensor(np.array([1.0], np.float32))
    assert message.content == b"\x00\x00\x80\x3f"


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.int64, np.bool_])
def test_unsupported_dtype_to_tensor(dtype: type) -> None:
    with pytest.raises(InvalidArgument):
        to_tensor(np.zeros((2, 2), dtype))


@pytest.mark.parametrize(
    ("dtype", "shape", "content"),
    [
        (common_pb2.DATA_TYPE_FLOAT32, [2, 2], b"\x00" * 15),
        (common_pb2.DATA_TYPE_FLOAT32, [2, 2], b"\x00" * 17),
        (common_pb2.DATA_TYPE_UINT8, [3, 3, 3], b"\x00" * 26),
        (common_pb2.DATA_TYPE_FLOAT64, [1, 2], b"\x00" * 8),
        (common_pb2.DATA_TYPE_FLOAT64, [], b""),
        (common_pb2.DATA_TYPE_UINT8, [2**40, 2**40], b"\x00" * 4),
    ],
)
def test_mismatched_byte_counts(dtype: int, shape: list[int], content: bytes) -> None:
    tensor = common_pb2.Tensor(dtype=dtype, shape=shape, content=content)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="bytes"):
        from_tensor(tensor, "input")


@pytest.mark.parametrize("code", [common_pb2.DATA_TYPE_UNSPECIFIED, 7, 99])
def test_unknown_dtype(code: int) -> None:
    tensor = common_pb2.Tensor(dtype=code, shape=[1], content=b"\x00")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="dtype"):
        from_tensor(tensor)


@pytest.mark.parametrize("shape", [[-1], [2, -3], [-2, -2]])
def test_negative_dimensions(shape: list[int]) -> None:
    tensor = common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_UINT8, shape=shape, content=b"\x00" * 4)
    with pytest.raises(InvalidArgument, match="negative"):
        from_tensor(tensor)
