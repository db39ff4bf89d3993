"""What runs inside an inference worker process: TensorFlow sessions of vetted graphs on one
device. Nothing here is imported by the gRPC server process, so a model that crashes
TensorFlow takes down only its worker."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ banner is not our log
import tensorflow as tf  # noqa: E402

from services.core.errors import FailedPrecondition, InvalidArgument, MemoryLimitExceeded, NotFound
from services.core.tensors import as_unit_float32  # noqa: E402
from services.core.timing import Comparison, Timing, TimingCheck, TimingOptions
from services.inference.graphs import GraphSpec, parse_graph  # noqa: E402
from services.inference.integrity import check_timing_input, checked_output  # noqa: E402
from services.inference.timing import measure, measure_interleaved, measure_pirm2018

if TYPE_CHECKING:
    from services.inference.worker import RunClock


REWARM_RUNS = 2  # warm-up of a session timed on the same input before (the least that
# lets warm_up see whether runs still speed up)


class LoadedModel:
    def __init__(self, spec: GraphSpec, graph_def: tf.compat.v1.GraphDef, device: str,
                 config: tf.compat.v1.ConfigProto, clock: RunClock | None = None) -> None:
        self.spec = spec
        self.clock = clock  # tells the server how long the current run has lasted
        # Input shapes this session was timed on: its warm-up there is shorter next time.
        self.timed_shapes: set[tuple[int, ...]] = set()
        self.session = tf.compat.v1.Session(graph=self.import_graph(spec, graph_def, device),
                                            config=config)

    @staticmethod
    def import_graph(spec: GraphSpec, graph_def: tf.compat.v1.GraphDef, device: str) -> tf.Graph:
        graph = tf.Graph()
        with graph.as_default(), tf.device(f"/{device.upper()}:0"):
            try:
                tf.compat.v1.import_graph_def(graph_def, name="")
                graph.get_tensor_by_name(spec.input_tensor)
                graph.get_tensor_by_name(spec.output_tensor)
            except (ValueError, KeyError, tf.errors.OpError) as error:
                raise InvalidArgument(f"model {spec.name!r} cannot be imported: {error}") from error
        return graph

    def run(self, image: np.ndarray) -> np.ndarray:
        if self.clock is not None:
            self.clock.started(self.spec.name, image.shape)
        try:
            output = self.session.run(self.spec.output_tensor, {self.spec.input_tensor: image})
        except tf.errors.ResourceExhaustedError as error:
            raise MemoryLimitExceeded(
                f"model {self.spec.name!r} exceeds the memory limit on an input of shape "
                f"{image.shape}: {_error_summary(error)}"
            ) from error
        except tf.errors.OpError as error:
            raise InvalidArgument(
                f"model {self.spec.name!r} failed on an input of shape {image.shape}: "
                f"{_error_summary(error)}"
            ) from error
        finally:
            if self.clock is not None:
                self.clock.stopped()
        output = np.asarray(output)
        if output.shape != image.shape:
            raise InvalidArgument(
                f"model {self.spec.name!r} returned shape {output.shape} for an input of shape "
                f"{image.shape}; the output must have the input's shape [1, H, W, 3]"
            )
        return output


class ModelRuntime:
    """The models of one worker process, all on one device."""

    def __init__(self, device: str, intra_op_threads: int, inter_op_threads: int,
                 clock: RunClock | None = None) -> None:
        if device == "gpu" and not tf.config.list_physical_devices("GPU"):
            raise FailedPrecondition(
                "this inference node has no GPU; run the request on a GPU node or use device cpu"
            )
        self.device = device
        self.config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=intra_op_threads,
            inter_op_parallelism_threads=inter_op_threads,
            allow_soft_placement=False,
        )
        self.models: dict[str, LoadedModel] = {}
        self.clock = clock

    def ping(self) -> str:
        return self.device

    def load(self, name: str, data: bytes, input_tensor: str, output_tensor: str,
             max_bytes: int, max_nodes: int) -> GraphSpec:
        graph_def, spec = parse_graph(name, data, input_tensor, output_tensor, max_bytes,
                                      max_nodes)
        existing = self.models.get(name)
        if existing is not None and existing.spec == spec:
            return spec
        self.models[name] = LoadedModel(spec, graph_def, self.device, self.config, self.clock)
        if existing is not None:
            existing.session.close()
        return spec

    def vet(self, name: str, data: bytes, input_tensor: str, output_tensor: str,
            max_bytes: int, max_nodes: int) -> GraphSpec:
        """What loading checks (the allowlist, the tensors, TensorFlow's import of the graph),
        without a session: the submission is refused or accepted, nothing is kept."""
        graph_def, spec = parse_graph(name, data, input_tensor, output_tensor, max_bytes,
                                      max_nodes)
        LoadedModel.import_graph(spec, graph_def, self.device)
        return spec

    def unload(self, name: str) -> None:
        model = self.models.pop(name, None)
        if model is not None:
            model.session.close()

    # Inputs arrive as float32 in [0, 1] or as uint8 pixels (a quarter of the bytes to move),
    # which become value / 255 here, outside every timer.

    def run(self, name: str, image: np.ndarray) -> tuple[np.ndarray, float]:
        model, image = self._model(name), as_unit_float32(image)
        start = time.perf_counter_ns()
        output = model.run(image)
        return output, (time.perf_counter_ns() - start) / 1e6

    def benchmark(self, name: str, image: np.ndarray, options: TimingOptions,
                  probes: list[np.ndarray] | None = None) -> tuple[Timing, TimingCheck]:
        """The model's timing; with `probes` (a list, maybe empty), also the check that the
        timing input is not special to it (integrity.py)."""
        model, image = self._model(name), as_unit_float32(image)
        last = _LastOutput(model)
        timing = measure(lambda: last.run(image), options)
        return timing, last.check(image, timing.median_ms, probes)

    def benchmark_pirm2018(self, name: str, images: list[np.ndarray]) -> Timing:
        model = self._model(name)
        images = [as_unit_float32(image) for image in images]
        return measure_pirm2018(lambda index: model.run(images[index]), len(images))

    def compare(self, name: str, baseline: str, image: np.ndarray, options: TimingOptions,
                probes: list[np.ndarray] | None = None) -> Comparison:
        """Times the model and the baseline in alternation (A B A B ...) so drift cancels;
        `probes` as in benchmark."""
        model, base = self._model(name), self._model(baseline)
        image = as_unit_float32(image)
        last = _LastOutput(model)
        # A session already timed on this input shape in this process (the baseline of the
        # last job; a resubmission of the same bytes still loaded) is warm: it needs fewer
        # warm-up runs, and more follow while its runs still speed up. Only warm-up is spared:
        # every timed figure is measured anew.
        shape = tuple(image.shape)
        warm = [shape in m.timed_shapes for m in (model, base)]
        warmups = [min(options.warmup_runs, REWARM_RUNS) if w else options.warmup_runs
                   for w in warm]
        comparison = measure_interleaved(lambda: last.run(image), lambda: base.run(image),
                                         options, warmups=(warmups[0], warmups[1]))
        model.timed_shapes.add(shape)
        base.timed_shapes.add(shape)
        reused = tuple(f"{side} warm-up ({warmup} runs: timed on this input before)"
                       for side, w, warmup in zip(("model", "baseline"), warm, warmups,
                                                  strict=True) if w)
        stopping = replace(comparison.stopping, reused=reused)
        return replace(comparison, stopping=stopping, check=last.check(
            image, comparison.solution.median_ms, probes, comparison.baseline.median_ms))

    def gpu_peak_bytes(self) -> int:
        """TensorFlow's own peak allocation on the GPU since this process started."""
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])

    def _model(self, name: str) -> LoadedModel:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"no model named {name!r} is loaded; call LoadModel first")
        return model


class _LastOutput:
    """Runs a model keeping its last output, which is checked like a quality output once the
    timing is done (outside every timer): a graph has no state or randomness, so every run
    returns the same."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.output: np.ndarray | None = None

    def run(self, image: np.ndarray) -> np.ndarray:
        self.output = self.model.run(image)
        return self.output

    def check(self, image: np.ndarray, timed_ms: float, probes: list[np.ndarray] | None,
              baseline_ms: float = 0.0) -> TimingCheck:
        assert self.output is not None
        checked_output(self.output, image, "the timing input")
        if probes is None:
            return TimingCheck()
        # Probes become float32 before any timer, as the timing input did.
        others = [as_unit_float32(probe) for probe in probes]
        return check_timing_input(self.model.run, image, self.output, timed_ms, others,
                                  baseline_ms)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def reset_peak_resident() -> None:
    """Sets the kernel's high-water mark of this process's resident memory to its current
    size (Linux 4.0+), so that what a spare process did before its call does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass  # the mark then also covers TensorFlow's import: an upper bound


def peak_resident_bytes() -> int:
    """The kernel's high-water mark of this process's own resident memory (VmHWM). Not
    ru_maxrss: a spawned process inherits its parent's ru_maxrss at exec (measured: a server
    that once held 826 MiB gave every probe at least 826 MiB)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _error_summary(error: tf.errors.OpError) -> str:
    """What went wrong, from TensorFlow's message without its Python stack traces: the
    failing node and the error itself (its first line alone is often just "Graph execution
    error:"). Also left out: the node again in brackets, and the hint to debug an OOM with
    RunOptions, which a team submitting a file cannot act on."""
    kept = []
    for line in str(error.message).splitlines():
        text = line.strip()
        if text.startswith("Original stack trace"):
            break
        if (not text or text.startswith(("File ", "Graph execution error", "Detected at node",
                                         "[[", "Hint:"))
                or text.endswith("(most recent call last):")):
            continue
        kept.append(text)
    summary = " ".join(kept) or str(error.message).strip()
    return summary if len(summary) <= 400 else summary[:400] + " ..."
