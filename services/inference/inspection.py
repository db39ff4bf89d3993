"""What a frozen graph is, before it is submitted: its ops, parameters, FLOPs on an input of a
given size, tensor names and shapes, and whether the inference service would accept it.

Nothing here runs the model. Shapes are propagated by TensorFlow's own shape inference after the
graph is imported with its input fixed to the size asked for; a graph the allowlist refuses is
never imported. FLOP formulas count a multiply-add as 2 FLOPs, as TensorFlow's profiler does.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.core.errors import InvalidArgument
from services.inference.graphs import (
    DEFAULT_INPUT,
    DEFAULT_MAX_GRAPH_NODES,
    DEFAULT_OUTPUT,
    decode_graph,
    missing_tensors,
    node_count_problems,
    refused_ops,
)

if TYPE_CHECKING:
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2

# Layers whose operands at these positions are learned weights (filters, matrices, biases,
# batch-norm statistics) when they are constants.
WEIGHT_OPERANDS = {
    "Conv2D": (1,), "Conv3D": (1,), "DepthwiseConv2dNative": (1,), "Conv2DBackpropInput": (1,),
    "MatMul": (0, 1), "BatchMatMul": (0, 1), "BatchMatMulV2": (0, 1), "BatchMatMulV3": (0, 1),
    "BiasAdd": (1,), "FusedBatchNorm": (1, 2, 3, 4), "FusedBatchNormV2": (1, 2, 3, 4),
    "FusedBatchNormV3": (1, 2, 3, 4),
}
LINEAR_LAYERS = frozenset(WEIGHT_OPERANDS) - {"BiasAdd"}
# A bias or scale written as plain arithmetic right after a layer (SRCNN's `conv + b`).
AFFINE_OPS = frozenset(["Add", "AddV2", "Sub", "Mul"])
# Ops that only forward a tensor: followed when tracing a weight back to its constant.
PASS_THROUGH = frozenset(["Identity", "Cast", "StopGradient"])

# One FLOP per output element.
ELEMENT_WISE = frozenset([
    "Abs", "Add", "AddV2", "BiasAdd", "Ceil", "ClipByValue", "Cos", "Div", "DivNoNan", "Elu",
    "Equal", "Erf", "Exp", "Floor", "FloorDiv", "FloorMod", "Greater", "GreaterEqual",
    "LeakyRelu", "Less", "LessEqual", "Log", "Log1p", "LogicalAnd", "LogicalNot", "LogicalOr",
    "Maximum", "Minimum", "Mul", "Neg", "NotEqual", "Pow", "RealDiv", "Reciprocal", "Relu",
    "Relu6", "Select", "SelectV2", "Selu", "Sigmoid", "Sign", "Sin", "Softplus", "Softsign",
    "Sqrt", "Square", "Sub", "Tanh",
])
# Element-wise ops made of several operations: rsqrt = square root and reciprocal, squared
# difference = subtraction and square, softmax = max, subtraction, exp, sum and division.
COMPOUND_ELEMENT_WISE = {"Rsqrt": 2, "SquaredDifference": 2, "Softmax": 5}
# n - 1 operations to reduce n values to one; Mean also divides once per output.
REDUCTIONS = frozenset(["ArgMax", "ArgMin", "Max", "Min", "Prod", "Sum"])
# Ops that do arithmetic we do not model: their FLOPs are left out and the report says so.
NOT_MODELLED = frozenset(["ResizeArea", "ResizeBicubic", "ResizeBilinear"])


@dataclass(frozen=True)
class TensorInfo:
    name: str
    declared_shape: tuple[int, ...] | None  # as the graph declares it, -1 for any size
    shape: tuple[int, ...] | None  # propagated for the inspected input; None: unknown


@dataclass(frozen=True)
class Inspection:
    """What `inspect_graph` found; FLOPs and shapes are None when the graph was not imported."""

    size_bytes: int
    node_count: int
    ops: dict[str, int]
    parameters: int
    parameter_tensors: int
    constant_values: int
    input: TensorInfo
    output: TensorInfo
    input_size: tuple[int, int]  # width, height
    flops: int | None
    flops_by_op: dict[str, int]
    not_counted: tuple[str, ...]  # op types present whose arithmetic is not modelled
    unknown_shape_ops: tuple[str, ...]  # nodes whose FLOPs could not be computed
    refused: tuple[tuple[str, str], ...]  # (op, reason) the allowlist refuses
    problems: tuple[str, ...] = field(default=())  # why the service would refuse it otherwise

    @property
    def accepted(self) -> bool:
        return not self.refused and not self.problems


def inspect_graph(data: bytes, input_size: tuple[int, int], input_tensor: str = DEFAULT_INPUT,
                  output_tensor: str = DEFAULT_OUTPUT,
                  max_nodes: int = DEFAULT_MAX_GRAPH_NODES) -> Inspection:
    """Inspects a serialized frozen graph for an input of `input_size` (width, height);
    InvalidArgument when `data` is not a GraphDef at all. A graph over `max_nodes` is not
    imported (the service refuses it, and importing one that large is slow)."""
    graph_def = decode_graph(data)
    refused = tuple(refused_ops(graph_def))
    problems = [*node_count_problems(graph_def, max_nodes),
                *missing_tensors(graph_def, input_tensor, output_tensor)]
    params, tensors, constants = count_parameters(graph_def)
    flops: int | None = None
    by_op: dict[str, int] = {}
    unknown: list[str] = []
    shapes: tuple[Any, Any] = (None, None)
    if not refused and not problems:
        try:
            graph = import_with_input_size(graph_def, input_tensor, input_size)
        except InvalidArgument as error:
            problems.append(str(error))
        else:
            by_op, unknown = count_flops(graph)
            flops = sum(by_op.values())
            shapes = ((1, input_size[1], input_size[0], 3),
                      _static_shape(graph.get_tensor_by_name(output_tensor)))
            problems.extend(shape_problems(*shapes))
    present = {node.op for node in graph_def.node}
    return Inspection(
        size_bytes=len(data), node_count=len(graph_def.node),
        ops=dict(sorted(Counter(node.op for node in graph_def.node).items())),
        parameters=params, parameter_tensors=tensors, constant_values=constants,
        input=TensorInfo(input_tensor, declared_shape(graph_def, input_tensor), shapes[0]),
        output=TensorInfo(output_tensor, declared_shape(graph_def, output_tensor), shapes[1]),
        input_size=input_size, flops=flops, flops_by_op=dict(sorted(by_op.items())),
        not_counted=tuple(sorted(present & NOT_MODELLED)), unknown_shape_ops=tuple(unknown),
        refused=refused, problems=tuple(problems),
    )


def shape_problems(input_shape: tuple[int, ...] | None,
                   output_shape: tuple[int, ...] | None) -> list[str]:
    """The challenge's contract: the output has the input's shape (SPEC.md section 1)."""
    if input_shape is None or output_shape is None or input_shape == output_shape:
        return []
    return [f"the output's shape {list(output_shape)} differs from the input's "
            f"{list(input_shape)}; the output must have the input's shape [1, H, W, 3]"]


# -- parameters ----------------------------------------------------------------------------


def count_parameters(graph_def: graph_pb2.GraphDef) -> tuple[int, int, int]:
    """(parameters, tensors holding them, values of all floating-point constants).

    A parameter is a value of a floating-point Const that a layer uses as a weight: the filter
    of a convolution, a constant matrix of a MatMul, the bias of BiasAdd, batch-norm statistics,
    and the constant operand of an Add/Sub/Mul applied directly to a layer's output (a bias or
    scale written as arithmetic). Other constants (an output's rescaling, shapes, paddings)
    are not parameters; `constant_values` counts every floating-point constant value."""
    nodes = {node.name: node for node in graph_def.node}
    weights: set[str] = set()
    for node in graph_def.node:
        for position in weight_positions(node, nodes):
            const = traced_const(node.input[position], nodes)
            if const is not None:
                weights.add(const)
    sizes = {name: const_size(node) for name, node in nodes.items()
             if node.op == "Const" and is_float(node)}
    return sum(sizes[name] for name in weights if name in sizes), \
        len(weights & set(sizes)), sum(sizes.values())


def weight_positions(node: Any, nodes: dict[str, Any]) -> tuple[int, ...]:
    if node.op in WEIGHT_OPERANDS:
        return WEIGHT_OPERANDS[node.op]
    if node.op in AFFINE_OPS and len(node.input) == 2:
        producers = [traced_producer(name, nodes) for name in node.input]
        return tuple(1 - i for i, p in enumerate(producers)
                     if p is not None and p.op in LINEAR_LAYERS | {"BiasAdd"})
    return ()


def traced_producer(tensor: str, nodes: dict[str, Any]) -> Any:
    """The node producing `tensor`, looking through pass-through ops."""
    node = nodes.get(tensor.lstrip("^").split(":")[0])
    seen = 0
    while node is not None and node.op in PASS_THROUGH and node.input and seen < len(nodes):
        node = nodes.get(node.input[0].lstrip("^").split(":")[0])
        seen += 1
    return node


def traced_const(tensor: str, nodes: dict[str, Any]) -> str | None:
    node = traced_producer(tensor, nodes)
    return node.name if node is not None and node.op == "Const" else None


def const_size(node: Any) -> int:
    return math.prod(dim.size for dim in node.attr["value"].tensor.tensor_shape.dim)


def is_float(node: Any) -> bool:
    from tensorflow.core.framework import types_pb2

    return node.attr["dtype"].type in (types_pb2.DT_FLOAT, types_pb2.DT_HALF,
                                       types_pb2.DT_DOUBLE, types_pb2.DT_BFLOAT16)


# -- shapes --------------------------------------------------------------------------------


def declared_shape(graph_def: graph_pb2.GraphDef, tensor: str) -> tuple[int, ...] | None:
    """The shape a Placeholder declares (-1 for a free dimension); None for other nodes."""
    for node in graph_def.node:
        if node.name == tensor.split(":")[0] and "shape" in node.attr:
            shape = node.attr["shape"].shape
            return None if shape.unknown_rank else tuple(d.size for d in shape.dim)
    return None


def import_with_input_size(graph_def: graph_pb2.GraphDef, input_tensor: str,
                           input_size: tuple[int, int]) -> tf.Graph:
    """The graph imported with its input replaced by a [1, H, W, 3] placeholder, so that
    TensorFlow's shape inference gives every tensor its shape for that input."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    width, height = input_size
    graph = tf.Graph()
    with graph.as_default():
        fixed = tf.compat.v1.placeholder(tf.float32, [1, height, width, 3],
                                         name="inspected_input")
        try:
            tf.compat.v1.import_graph_def(graph_def, input_map={input_tensor: fixed}, name="")
        except (ValueError, tf.errors.OpError) as error:
            raise InvalidArgument(
                f"the model cannot take a {width}x{height} input: {first_line(error)}. "
                "Models must take any resolution (SPEC.md section 1)"
            ) from error
    return graph


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _static_shape(tensor: Any) -> tuple[int, ...] | None:
    shape = tensor.shape
    if shape.rank is None or not shape.is_fully_defined():
        return None
    return tuple(int(d) for d in shape.as_list())


# -- FLOPs ---------------------------------------------------------------------------------


def count_flops(graph: tf.Graph) -> tuple[dict[str, int], list[str]]:
    """FLOPs per op type, and the nodes whose FLOPs are unknown (shapes not static)."""
    by_op: Counter[str] = Counter()
    unknown = []
    for op in graph.get_operations():
        try:
            flops = op_flops(op)
        except _ShapeUnknown:
            unknown.append(op.name)
            continue
        if flops:
            by_op[op.type] += flops
    return dict(by_op), unknown


class _ShapeUnknown(Exception):
    pass


def _elements(tensor: Any) -> int:
    return math.prod(_dims(tensor))


def _dims(tensor: Any) -> tuple[int, ...]:
    shape = _static_shape(tensor)
    if shape is None:
        raise _ShapeUnknown
    return shape


def op_flops(op: Any) -> int:
    """FLOPs of one node: 2 per multiply-add, 1 per element-wise operation."""
    kind = op.type
    if kind in ("Conv2D", "Conv3D"):
        # every output value: a dot product over the kernel window and input channels
        return 2 * _elements(op.outputs[0]) * math.prod(_dims(op.inputs[1])[:-1])
    if kind == "DepthwiseConv2dNative":
        height, width = _dims(op.inputs[1])[:2]
        return 2 * _elements(op.outputs[0]) * height * width
    if kind == "Conv2DBackpropInput":
        # the transposed convolution spreads each input value over kernel x result channels
        return 2 * _elements(op.inputs[2]) * math.prod(_dims(op.inputs[1])[:-1])
    if kind in ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a = _dims(op.inputs[0])
        transposed = op.node_def.attr["transpose_a"].b or op.node_def.attr["adj_x"].b
        inner = a[-2] if transposed else a[-1]
        return 2 * _elements(op.outputs[0]) * inner
    if kind in COMPOUND_ELEMENT_WISE:
        return COMPOUND_ELEMENT_WISE[kind] * _elements(op.outputs[0])
    if kind in ELEMENT_WISE:
        return _elements(op.outputs[0])
    if kind == "AddN":
        return (len(op.inputs) - 1) * _elements(op.outputs[0])
    if kind in REDUCTIONS:
        return _elements(op.inputs[0]) - _elements(op.outputs[0])
    if kind == "Mean":
        return _elements(op.inputs[0])
    if kind in ("AvgPool", "MaxPool"):
        return math.prod(op.node_def.attr["ksize"].list.i) * _elements(op.outputs[0])
    if kind.startswith("FusedBatchNorm"):
        return 2 * _elements(op.outputs[0])  # inference: one scale and one offset per value
    return 0  # constants, data movement, and NOT_MODELLED


def inspection_dict(found: Inspection) -> dict[str, Any]:
    """The JSON form of an Inspection (what `pirm inspect --json` prints)."""

    def tensor(info: TensorInfo) -> dict[str, Any]:
        return {"name": info.name,
                "declared_shape": list(info.declared_shape) if info.declared_shape else None,
                "shape": list(info.shape) if info.shape else None}

    return {
        "size_bytes": found.size_bytes, "nodes": found.node_count, "ops": found.ops,
        "parameters": found.parameters, "parameter_tensors": found.parameter_tensors,
        "constant_values": found.constant_values, "input": tensor(found.input),
        "output": tensor(found.output), "input_size": list(found.input_size),
        "flops": found.flops, "flops_by_op": found.flops_by_op,
        "flops_not_counted_ops": list(found.not_counted),
        "flops_unknown_shape_nodes": list(found.unknown_shape_ops),
        "accepted": found.accepted,
        "refused_ops": [{"op": op, "reason": reason} for op, reason in found.refused],
        "problems": list(found.problems),
    }
