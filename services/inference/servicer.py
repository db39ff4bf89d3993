"""gRPC <-> domain translation for the inference service; the work is in engine.py."""

from __future__ import annotations

import threading

import grpc
from pirm.v1 import common_pb2, inference_pb2, inference_pb2_grpc

from services.core.errors import InvalidArgument
from services.core.tensors import from_tensor, to_tensor
from services.core.wire import stopping_to_proto, timing_options, timing_to_proto
from services.inference.engine import Engine
from services.inference.graphs import GraphSpec

WORK_STARTED = ("pirm-work", "started")  # the scorer's clients.py reads it
_DEVICES = {common_pb2.DEVICE_UNSPECIFIED: "", common_pb2.DEVICE_CPU: "cpu",
            common_pb2.DEVICE_GPU: "gpu"}


def model_info(spec: GraphSpec) -> inference_pb2.ModelInfo:
    return inference_pb2.ModelInfo(
        name=spec.name,
        sha256=spec.sha256,
        size_bytes=spec.size_bytes,
        input_tensor=spec.input_tensor,
        output_tensor=spec.output_tensor,
        node_count=spec.node_count,
        ops=list(spec.ops),
    )


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def LoadModel(
        self, request: inference_pb2.LoadModelRequest, context: grpc.ServicerContext
    ) -> inference_pb2.LoadModelResponse:
        source = request.WhichOneof("source")
        if source == "repository":
            spec = self.engine.load_from_repository(
                request.repository.name, request.repository.version,
                request.input_tensor, request.output_tensor,
            )
        elif source == "graph_def":
            spec = self.engine.load(
                request.name, request.graph_def, request.input_tensor, request.output_tensor
            )
        else:
            raise InvalidArgument("LoadModel needs graph_def bytes or a repository model")
        return inference_pb2.LoadModelResponse(model=model_info(spec))

    def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        return inference_pb2.ListModelsResponse(
            models=[model_info(spec) for spec in self.engine.models()]
        )

    def UnloadModel(
        self, request: inference_pb2.UnloadModelRequest, context: grpc.ServicerContext
    ) -> inference_pb2.UnloadModelResponse:
        self.engine.unload(request.name)
        return inference_pb2.UnloadModelResponse()

    def Infer(
        self, request: inference_pb2.InferRequest, context: grpc.ServicerContext
    ) -> inference_pb2.InferResponse:
        image = from_tensor(request.input, "input")
        output, run_ms = self.engine.infer(request.model, image, _DEVICES[request.device])
        return inference_pb2.InferResponse(output=to_tensor(output), run_ms=run_ms)

    def MeasureMemory(
        self, request: inference_pb2.MeasureMemoryRequest, context: grpc.ServicerContext
    ) -> inference_pb2.MeasureMemoryResponse:
        abort = threading.Event()
        context.add_callback(abort.set)
        peak, reused = self.engine.measure_memory(
            request.model, from_tensor(request.input, "input"), _DEVICES[request.device], abort)
        return inference_pb2.MeasureMemoryResponse(peak_memory_mb=peak, reused=reused)

    def Benchmark(
        self, request: inference_pb2.BenchmarkRequest, context: grpc.ServicerContext
    ) -> inference_pb2.BenchmarkResponse:
        # Tells the caller the work has begun: a call lost after this is not retried blindly
        # (a timing takes minutes; see the scorer's EndpointPool.long_call).
        context.send_initial_metadata((WORK_STARTED,))
        image = from_tensor(request.input, "input")
        options, device = timing_options(request.options), _DEVICES[request.device]
        # A caller that gives up (a cancelled job) stops the measurement and frees the device.
        # The callback also runs after a normal end, when it no longer matters.
        abort = threading.Event()
        context.add_callback(abort.set)
        probes = ([from_tensor(probe, "probe") for probe in request.probes]
                  if request.check_timing_input else None)
        if not request.baseline_model:
            measured = self.engine.benchmark(request.model, image, options, device,
                                             request.measure_memory, abort, probes)
            return inference_pb2.BenchmarkResponse(timing=timing_to_proto(measured))
        result = self.engine.compare(request.model, request.baseline_model, image, options,
                                     device, request.measure_memory, abort, probes)
        return inference_pb2.BenchmarkResponse(
            timing=timing_to_proto(result.solution),
            baseline_timing=timing_to_proto(result.baseline),
            speed_ratio=result.speed_ratio,
            speed_ratio_ci95_low=result.ratio_ci95_low,
            speed_ratio_ci95_high=result.ratio_ci95_high,
            stopping=stopping_to_proto(result.stopping),
        )
