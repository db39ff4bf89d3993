"""A mobile runtime estimate: the frozen graph converted to LiteRT (TensorFlow Lite) and run by
the LiteRT interpreter on this CPU, timed beside TensorFlow on the same input and threads.

The challenge also ran the models on phones through TensorFlow Lite, and a model whose ops the
converter does not support could not run there. A desktop CPU is not a phone: the figure is a
proxy (the same runtime and kernels as on an Android CPU), not a phone measurement.

Everything here runs in a fresh process (`inspect_in_fresh_process`), after the allowlist
check, as the inference service runs untrusted graphs.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.core.errors import InvalidArgument
from services.core.timing import FIXED, Timing, TimingOptions
from services.inference.engine import DEFAULT_MEMORY_LIMIT
from services.inference.graphs import DEFAULT_INPUT, DEFAULT_OUTPUT, GraphSpec, parse_graph
from services.inference.inspection import Inspection, first_line, inspect_graph
from services.inference.timing import measure_interleaved
from services.inference.worker import call_in_fresh_process, cap_data_segment

# Fewer runs than a scored timing: an estimate on a proxy, at least 5 runs after warm-up.
MOBILE_TIMING = TimingOptions(warmup_runs=2, min_runs=5, min_seconds=1.0, max_runs=50,
                              protocol=FIXED)
_UNSUPPORTED_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")


class MobileConversionError(InvalidArgument):
    """The converter refused the graph; `ops` are the TensorFlow ops LiteRT has no kernel for."""

    def __init__(self, message: str, ops: tuple[str, ...]) -> None:
        super().__init__(message)
        self.ops = ops


@dataclass(frozen=True)
class MobileRequest:
    threads: int  # of LiteRT's interpreter and TensorFlow's intra-op pool alike
    options: TimingOptions = MOBILE_TIMING
    # The process's heap cap: twice the challenge's memory limit, as both runtimes hold the model.
    memory_limit_bytes: int = 2 * DEFAULT_MEMORY_LIMIT


@dataclass(frozen=True)
class MobileEstimate:
    input_shape: tuple[int, ...]
    threads: int
    litert_bytes: int = 0  # size of the converted model; 0: the conversion failed
    unsupported_ops: tuple[str, ...] = ()
    conversion_error: str = ""
    litert: Timing | None = None
    tensorflow: Timing | None = None
    speed_ratio: float = 0.0  # TensorFlow median / LiteRT median
    ratio_ci95: tuple[float, float] = (0.0, 0.0)
    max_abs_difference: float = 0.0  # LiteRT's output against TensorFlow's, same input


def convert_to_litert(graph_def: Any, spec: GraphSpec, input_shape: tuple[int, ...]) -> bytes:
    """The graph as a LiteRT flatbuffer for a fixed input shape, with LiteRT's built-in ops only
    (what a phone runs without the TensorFlow runtime); MobileConversionError otherwise."""
    import tensorflow as tf

    inputs, outputs = _array_name(spec.input_tensor), _array_name(spec.output_tensor)
    with tempfile.TemporaryDirectory(prefix="pirm-litert-") as folder:
        path = Path(folder) / "model.pb"
        path.write_bytes(graph_def.SerializeToString())
        converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(path), [inputs], [outputs], input_shapes={inputs: list(input_shape)})
        try:
            return bytes(converter.convert())
        except Exception as error:  # noqa: BLE001 - the converter raises several kinds
            raise conversion_error(error) from None


def conversion_error(error: Exception) -> MobileConversionError:
    """What the converter said, as the ops LiteRT lacks (or its first line), never a trace."""
    text = str(error)
    ops = tuple(sorted(set(_UNSUPPORTED_OP.findall(text))))
    if ops:
        return MobileConversionError(
            f"LiteRT has no built-in kernel for {', '.join(ops)}: the model cannot run on a "
            "phone's LiteRT runtime. Replace these ops with ones LiteRT supports", ops)
    return MobileConversionError(f"the LiteRT converter failed: {first_line(error)[:400]}", ())


def _array_name(tensor: str) -> str:
    return tensor[:-2] if tensor.endswith(":0") else tensor


def estimate_mobile(data: bytes, input_shape: tuple[int, ...], threads: int,
                    options: TimingOptions = MOBILE_TIMING, input_tensor: str = DEFAULT_INPUT,
                    output_tensor: str = DEFAULT_OUTPUT) -> MobileEstimate:
    """Vets the graph (InvalidArgument if refused), converts it and times LiteRT and TensorFlow
    alternately on one random input in [0, 1]; a failed conversion is part of the estimate."""
    graph_def, spec = parse_graph("model", data, input_tensor, output_tensor)
    try:
        flatbuffer = convert_to_litert(graph_def, spec, input_shape)
    except MobileConversionError as error:
        return MobileEstimate(input_shape, threads, unsupported_ops=error.ops,
                              conversion_error=str(error))
    image = np.random.default_rng(0).random(input_shape, dtype=np.float32)
    run_litert = litert_runner(flatbuffer, image, threads)
    run_tensorflow = tensorflow_runner(spec, graph_def, image, threads)
    difference = float(np.max(np.abs(run_litert() - run_tensorflow())))
    # Alternated (LiteRT, TensorFlow, ...) so that drift of a shared machine affects both alike.
    compared = measure_interleaved(run_litert, run_tensorflow, options)
    return MobileEstimate(
        input_shape, threads, litert_bytes=len(flatbuffer), litert=compared.solution,
        tensorflow=compared.baseline, speed_ratio=compared.speed_ratio,
        ratio_ci95=(compared.ratio_ci95_low, compared.ratio_ci95_high),
        max_abs_difference=difference,
    )


def litert_runner(flatbuffer: bytes, image: np.ndarray, threads: int) -> Any:
    """One LiteRT inference on the CPU: input set, invoke, output copied to the host."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    result = interpreter.get_output_details()[0]["index"]

    def run() -> np.ndarray:
        interpreter.set_tensor(source, image)
        interpreter.invoke()
        return np.array(interpreter.get_tensor(result))

    return run


def tensorflow_runner(spec: GraphSpec, graph_def: Any, image: np.ndarray, threads: int) -> Any:
    """One TensorFlow session run, as the inference service runs a model."""
    import tensorflow as tf

    from services.inference.runtime import LoadedModel

    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                      inter_op_parallelism_threads=1)
    model = LoadedModel(spec, graph_def, "cpu", config)
    return lambda: model.run(image)


def inspect_and_estimate(data: bytes, input_shape: tuple[int, ...], tensors: tuple[str, str],
                         mobile: MobileRequest | None) -> tuple[Inspection, MobileEstimate | None]:
    """The inspection for `input_shape` and, when asked and the model is accepted, the mobile
    estimate: what `pirm inspect` runs in one fresh process (one TensorFlow start)."""
    found = inspect_graph(data, (input_shape[2], input_shape[1]), *tensors)
    if mobile is None or not found.accepted:
        return found, None
    cap_data_segment(mobile.memory_limit_bytes)
    return found, estimate_mobile(data, input_shape, mobile.threads, mobile.options, *tensors)


def inspect_in_fresh_process(data: bytes, input_shape: tuple[int, ...],
                             tensors: tuple[str, str] = (DEFAULT_INPUT, DEFAULT_OUTPUT),
                             mobile: MobileRequest | None = None,
                             timeout_s: float = 900.0) -> tuple[Inspection, MobileEstimate | None]:
    """inspect_and_estimate in a spawned, quiet process: a model that crashes shape inference,
    the converter, LiteRT or TensorFlow fails this call, not the caller."""
    result: tuple[Inspection, MobileEstimate | None] = call_in_fresh_process(
        inspect_and_estimate, (data, tuple(input_shape), tensors, mobile),
        name="pirm-inspect", timeout_s=timeout_s, task="the inspection", quiet=True)
    return result
