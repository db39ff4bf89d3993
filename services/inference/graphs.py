"""Reading an untrusted frozen graph: size limit, parsing, op allowlist, tensor names.

Parsing runs in the worker processes (TensorFlow's GraphDef class is imported there only);
everything here happens before TensorFlow imports the graph, so that a hostile file is
rejected with a precise message before any of its ops can be instantiated.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from services.core.errors import InvalidArgument, NotFound
from services.core.limits import DEFAULT_MAX_MODEL_BYTES, check_model_size

if TYPE_CHECKING:
    from tensorflow.core.framework import graph_pb2

DEFAULT_INPUT = "input:0"
DEFAULT_OUTPUT = "output:0"
# The challenge's models have tens to hundreds of nodes (SRCNN 27, VDSR 136, the DPED ResNet
# 190: tests/unit/test_graphs.py). Measured with TensorFlow 2.21: importing a 50,000-node chain
# takes 15-30 s at every worker (re)start, and a 100,000-node one crashes the worker (SIGSEGV)
# at every run.
DEFAULT_MAX_GRAPH_NODES = 10_000

# Pure numerical ops: no file, network, Python or stateful resource access.
ALLOWED_OPS = frozenset(
    [
        "Abs", "Add", "AddN", "AddV2", "ArgMax", "ArgMin", "AvgPool", "BatchMatMul",
        "BatchMatMulV2", "BatchMatMulV3", "BatchToSpaceND", "BiasAdd", "Cast", "Ceil",
        "ClipByValue", "Concat", "ConcatV2", "Const", "Conv2D", "Conv2DBackpropInput",
        "Conv3D", "Cos", "DepthToSpace", "DepthwiseConv2dNative", "Div", "DivNoNan", "Elu",
        "Equal", "Erf", "Exp", "ExpandDims", "Fill", "Floor", "FloorDiv", "FloorMod",
        "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "Gather", "GatherNd",
        "GatherV2", "Greater", "GreaterEqual", "Identity", "IdentityN", "LeakyRelu", "Less",
        "LessEqual", "Log", "Log1p", "LogicalAnd", "LogicalNot", "LogicalOr", "MatMul",
        "Max", "MaxPool", "MaxPoolV2", "Maximum", "Mean", "Min", "Minimum", "MirrorPad",
        "Mul", "Neg", "NoOp", "OnesLike", "Pack", "Pad", "PadV2", "Placeholder",
        "PlaceholderWithDefault", "Pow", "Prod", "Range", "RealDiv", "Reciprocal", "Relu",
        "Relu6", "Reshape", "ResizeArea", "ResizeBicubic", "ResizeBilinear",
        "ResizeNearestNeighbor", "Rsqrt", "Select", "SelectV2", "Selu", "Shape", "Sigmoid",
        "Sign", "Sin", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToBatchND",
        "SpaceToDepth", "Split", "SplitV", "Sqrt", "Square", "SquaredDifference", "Squeeze",
        "StopGradient", "StridedSlice", "Sub", "Sum", "Tanh", "Tile", "Transpose", "Unpack",
        "ZerosLike",
    ]
)

_REPOSITORY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class GraphSpec:
    """What we know of a model after validation, before it runs."""

    name: str
    sha256: str
    size_bytes: int
    input_tensor: str
    output_tensor: str
    node_count: int
    ops: tuple[str, ...]


def parse_graph(
    name: str,
    data: bytes,
    input_tensor: str = "",
    output_tensor: str = "",
    max_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    max_nodes: int = DEFAULT_MAX_GRAPH_NODES,
) -> tuple[graph_pb2.GraphDef, GraphSpec]:
    """Parses and vets a serialized GraphDef; raises InvalidArgument saying what is wrong."""
    if not name:
        raise InvalidArgument("a model needs a name")
    graph_def = decode_graph(data, max_bytes)
    too_large = node_count_problems(graph_def, max_nodes)
    if too_large:
        raise InvalidArgument(too_large[0])
    check_ops(graph_def)
    input_tensor = input_tensor or DEFAULT_INPUT
    output_tensor = output_tensor or DEFAULT_OUTPUT
    missing = missing_tensors(graph_def, input_tensor, output_tensor)
    if missing:
        raise InvalidArgument(missing[0])
    spec = GraphSpec(
        name=name,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        input_tensor=input_tensor,
        output_tensor=output_tensor,
        node_count=len(graph_def.node),
        ops=tuple(sorted({node.op for node in graph_def.node})),
    )
    return graph_def, spec


def node_count_problems(graph_def: graph_pb2.GraphDef, max_nodes: int) -> list[str]:
    """Why the graph has too many nodes to be run here, if it has."""
    count = len(graph_def.node)
    if count <= max_nodes:
        return []
    return [f"model has {count:,} nodes; the limit is {max_nodes:,} (the inference service's "
            "--max-graph-nodes, env PIRM_MAX_GRAPH_NODES). The challenge's models have tens to "
            "hundreds of nodes: submit a smaller graph"]


def missing_tensors(graph_def: graph_pb2.GraphDef, input_tensor: str,
                    output_tensor: str) -> list[str]:
    """What is wrong with the input and output tensor names: a node the graph lacks."""
    nodes = {node.name for node in graph_def.node}
    return [f"model has no {role} tensor {tensor!r}: the graph has no node {node_name!r}. "
            f"Name the {role} node {node_name!r} or pass the tensor name with the model"
            for role, tensor in (("input", input_tensor), ("output", output_tensor))
            if (node_name := tensor.split(":")[0]) not in nodes]


def decode_graph(data: bytes, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> graph_pb2.GraphDef:
    """The GraphDef in `data` (size checked first); nothing in it is vetted yet."""
    from tensorflow.core.framework import graph_pb2  # only in worker processes

    check_model_size(len(data), max_bytes)
    graph_def = graph_pb2.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except DecodeError as error:
        raise InvalidArgument(
            f"model is not a TensorFlow GraphDef (.pb): {error}. Submit a frozen graph "
            "written with tf.io.write_graph(..., as_text=False)"
        ) from error
    if not graph_def.node:
        raise InvalidArgument(
            "model is not a TensorFlow frozen graph: it has no nodes. Submit the .pb file "
            "written with tf.io.write_graph(..., as_text=False)"
        )
    return graph_def


FUNCTION_LIBRARY = "function library"
# Why an op outside the allowlist is refused: the first family whose marker is in its name.
_REFUSAL_FAMILIES = (
    (("File", "Save", "Restore", "Writer", "Reader"), "reads or writes files"),
    (("PyFunc",), "runs Python code"),
    (("Variable", "Assign", "VarHandle", "Resource", "Scatter"),
     "holds mutable state (variables): freeze the graph so that weights are constants"),
    (("While", "If", "Call", "Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond",
      "Case"), "is control flow or a function call, which can loop forever or hide code"),
    (("Random", "Multinomial", "TruncatedNormal", "Shuffle"), "is random: outputs must be "
     "deterministic"),
    (("Dataset", "Iterator", "Queue", "Stack", "TensorArray", "Print", "Assert"),
     "has side effects or state outside the computation"),
)
_UNLISTED = ("is not on the allowlist of pure numerical ops (convolutions, element-wise maths, "
             "activations, resizing, reshaping)")


def refusal_reason(op: str) -> str:
    """Why `op`, an op outside the allowlist, may not run."""
    for markers, reason in _REFUSAL_FAMILIES:
        if any(marker in op for marker in markers):
            return reason
    return _UNLISTED


def refused_ops(graph_def: graph_pb2.GraphDef) -> list[tuple[str, str]]:
    """(op, reason) for every op type of the graph that may not run, sorted by op; a function
    library is reported as the pseudo-op "function library"."""
    refused = []
    if graph_def.library.function or graph_def.library.gradient:
        refused.append((FUNCTION_LIBRARY, "only plain frozen graphs of numerical ops are "
                        "accepted (inline functions before freezing)"))
    ops = sorted({node.op for node in graph_def.node} - ALLOWED_OPS)
    return refused + [(op, refusal_reason(op)) for op in ops]


def check_ops(graph_def: graph_pb2.GraphDef) -> None:
    refused = refused_ops(graph_def)
    if refused and refused[0][0] == FUNCTION_LIBRARY:
        raise InvalidArgument(f"model contains a {FUNCTION_LIBRARY}; {refused[0][1]}")
    if refused:
        listed = "; ".join(f"{op} ({reason})" for op, reason in refused)
        raise InvalidArgument(
            f"model uses ops that are not allowed: {listed}. Only pure numerical ops "
            "(convolutions, element-wise maths, activations, resizing, reshaping) may run"
        )


def repository_path(root: Path | None, name: str, version: str) -> Path:
    """<root>/<name>/<version>/model.pb, the highest numeric version when none is given."""
    if root is None:
        raise NotFound("this inference service has no model repository configured")
    for part in (name, version) if version else (name,):
        if not _REPOSITORY_PART.match(part):
            raise InvalidArgument(
                f"repository model name and version must be simple names, got {part!r}"
            )
    model_dir = root / name
    if not version:
        versions = sorted(
            (p.name for p in model_dir.glob("*") if p.name.isdigit()), key=int
        ) if model_dir.is_dir() else []
        if not versions:
            raise NotFound(f"model {name!r} has no numeric version in the repository")
        version = versions[-1]
    path = model_dir / version / "model.pb"
    if not path.is_file():
        raise NotFound(f"repository has no {name}/{version}/model.pb")
    return path
