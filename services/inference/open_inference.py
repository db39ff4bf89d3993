"""The Open Inference Protocol (KServe v2) over the same engine and model repository, with
Triton's model-configuration and statistics extensions: tritonclient and perf_analyzer work
against this service without our code. Only translation lives here."""

from __future__ import annotations

from importlib import metadata

import grpc
import numpy as np
from inference import open_inference_pb2 as oip
from inference import open_inference_pb2_grpc as oip_grpc

from services.core.errors import InvalidArgument, NotFound
from services.inference.engine import Engine
from services.inference.graphs import GraphSpec

PLATFORM = "tensorflow_graphdef"
SHAPE = [1, -1, -1, 3]  # batch of one, any resolution, RGB
VERSION = "1"
# Answered while the server drains too: they then say "not ready" (server.py).
READINESS_PROBES = ("ServerLive", "ServerReady", "ModelReady")


def tensor_name(tensor: str) -> str:
    """OIP names tensors without TensorFlow's output index: "input:0" is "input"."""
    return tensor.split(":")[0]


class OpenInferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ServerLive(self, request: oip.ServerLiveRequest,
                   context: grpc.ServicerContext) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    def ServerReady(self, request: oip.ServerReadyRequest,
                    context: grpc.ServicerContext) -> oip.ServerReadyResponse:
        # As gRPC health: false while the TensorFlow worker starts and once the server drains.
        return oip.ServerReadyResponse(ready=self.engine.ready)

    def ServerMetadata(self, request: oip.ServerMetadataRequest,
                       context: grpc.ServicerContext) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name="pirm-inference", version=metadata.version("pirm-eval"),
            extensions=["model_configuration", "statistics"],
        )

    def ModelReady(self, request: oip.ModelReadyRequest,
                   context: grpc.ServicerContext) -> oip.ModelReadyResponse:
        if not self.engine.ready:  # before _spec, which may load a repository model
            return oip.ModelReadyResponse(ready=False)
        try:
            self._spec(request.name, request.version)
        except NotFound:
            return oip.ModelReadyResponse(ready=False)
        return oip.ModelReadyResponse(ready=self.engine.statistics(request.name).ready)

    def ModelMetadata(self, request: oip.ModelMetadataRequest,
                      context: grpc.ServicerContext) -> oip.ModelMetadataResponse:
        spec = self._spec(request.name, request.version)
        meta = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=spec.name, versions=[VERSION], platform=PLATFORM,
            inputs=[meta(name=tensor_name(spec.input_tensor), datatype="FP32", shape=SHAPE)],
            outputs=[meta(name=tensor_name(spec.output_tensor), datatype="FP32", shape=SHAPE)],
        )

    def ModelConfig(self, request: oip.ModelConfigRequest,
                    context: grpc.ServicerContext) -> oip.ModelConfigResponse:
        spec = self._spec(request.name, request.version)
        return oip.ModelConfigResponse(config=oip.ModelConfig(
            name=spec.name, platform=PLATFORM, backend="tensorflow", max_batch_size=0,
            input=[oip.ModelInput(name=tensor_name(spec.input_tensor), data_type=oip.TYPE_FP32,
                                  format=oip.ModelInput.FORMAT_NHWC, dims=SHAPE)],
            output=[oip.ModelOutput(name=tensor_name(spec.output_tensor),
                                    data_type=oip.TYPE_FP32, dims=SHAPE)],
        ))

    def ModelStatistics(self, request: oip.ModelStatisticsRequest,
                        context: grpc.ServicerContext) -> oip.ModelStatisticsResponse:
        names = ([self._spec(request.name, request.version).name] if request.name
                 else [spec.name for spec in self.engine.models()])
        return oip.ModelStatisticsResponse(model_stats=[self._statistics(n) for n in names])

    def ModelInfer(self, request: oip.ModelInferRequest,
                   context: grpc.ServicerContext) -> oip.ModelInferResponse:
        spec = self._spec(request.model_name, request.model_version)
        image = self._input(request, spec)
        output, _ = self.engine.infer(spec.name, image)
        name = tensor_name(spec.output_tensor)
        wanted = [o.name for o in request.outputs]
        if wanted and wanted != [name]:
            raise InvalidArgument(f"model {spec.name!r} has one output, {name!r}; asked {wanted}")
        return oip.ModelInferResponse(
            model_name=spec.name, model_version=VERSION, id=request.id,
            outputs=[oip.ModelInferResponse.InferOutputTensor(
                name=name, datatype="FP32", shape=list(output.shape))],
            raw_output_contents=[np.ascontiguousarray(output, "<f4").tobytes()],
        )

    def _input(self, request: oip.ModelInferRequest, spec: GraphSpec) -> np.ndarray:
        name = tensor_name(spec.input_tensor)
        if len(request.inputs) != 1 or request.inputs[0].name not in (name, spec.input_tensor):
            given = [i.name for i in request.inputs]
            raise InvalidArgument(f"model {spec.name!r} takes one input named {name!r}, "
                                  f"got {given}")
        tensor = request.inputs[0]
        if tensor.datatype != "FP32":
            raise InvalidArgument(f"input {name!r} must be FP32, got {tensor.datatype!r}")
        shape = tuple(tensor.shape)
        if len(shape) != 4 or any(d <= 0 for d in shape):
            raise InvalidArgument(f"input {name!r} must have shape [1, H, W, 3], got {shape}")
        count = int(np.prod(shape))
        if request.raw_input_contents:
            raw = request.raw_input_contents[0]
            if len(raw) != count * 4:
                raise InvalidArgument(f"input {name!r} of shape {shape} needs {count * 4} raw "
                                      f"bytes, got {len(raw)}")
            return np.frombuffer(raw, "<f4").reshape(shape)
        values = tensor.contents.fp32_contents
        if len(values) != count:
            raise InvalidArgument(f"input {name!r} of shape {shape} needs {count} fp32 values, "
                                  f"got {len(values)}")
        return np.asarray(values, np.float32).reshape(shape)

    def _spec(self, name: str, version: str) -> GraphSpec:
        """A loaded model, or one loaded now from the repository (then warmed up)."""
        for spec in self.engine.models():
            if spec.name == name:
                return spec
        if self.engine.settings.repository is None:
            raise NotFound(f"no model named {name!r} is loaded")
        return self.engine.load_from_repository(name, version)

    def _statistics(self, name: str) -> oip.ModelStatistics:
        stats = self.engine.statistics(name)
        duration = oip.StatisticDuration
        return oip.ModelStatistics(
            name=name, version=VERSION, last_inference=stats.last_inference_ms,
            inference_count=stats.success_count, execution_count=stats.success_count,
            inference_stats=oip.InferStatistics(
                success=duration(count=stats.success_count, ns=stats.success_ns),
                fail=duration(count=stats.fail_count, ns=stats.fail_ns),
                queue=duration(count=stats.success_count, ns=0),
                compute_infer=duration(count=stats.success_count, ns=stats.compute_ns),
            ),
        )
