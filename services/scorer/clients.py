"""gRPC clients of the inference and metrics services, as the scorer's backends.

Every call has a deadline; UNAVAILABLE is retried with exponential backoff; any other status
becomes the domain error of the same code, so that a job fails with the service's own message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import numpy as np
from pirm.v1 import common_pb2, inference_pb2, inference_pb2_grpc, metrics_pb2, metrics_pb2_grpc

from services.common import errors
from services.common.messages import timing_from_proto
from services.common.server import open_channel
from services.common.tensors import from_tensor, to_tensor
from services.inference.timing import DeviceTiming, RuntimeComparison, TimingOptions
from services.metrics.quality import PairQuality, QualityOptions
from services.metrics.servicer import FLAVOR_MESSAGES

T = TypeVar("T")

_ERRORS: dict[grpc.StatusCode, type[errors.PirmError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
}


def call_with_retry(
    service: str, call: Callable[[], T], attempts: int = 5, first_backoff_s: float = 0.2
) -> T:
    for attempt in range(attempts):
        try:
            return call()
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                time.sleep(first_backoff_s * 2**attempt)
                continue
            kind = _ERRORS.get(code, errors.PirmError)
            raise kind(f"{service}: {error.details()}") from error
    raise AssertionError("unreachable")


class InferenceClient:
    def __init__(self, target: str, max_message_mb: int, deadline_s: float = 600.0) -> None:
        self._channel = open_channel(target, max_message_mb)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)
        self._deadline = deadline_s

    def load_model(
        self, name: str, graph_def: bytes | None, repository_model: str,
        input_tensor: str, output_tensor: str,
    ) -> str:
        request = inference_pb2.LoadModelRequest(
            name=name, input_tensor=input_tensor, output_tensor=output_tensor
        )
        if repository_model:
            repo_name, _, version = repository_model.partition("/")
            request.repository.CopyFrom(inference_pb2.RepositoryModel(name=repo_name,
                                                                      version=version))
        else:
            request.graph_def = graph_def or b""
        response = call_with_retry(
            "inference", lambda: self._stub.LoadModel(request, timeout=self._deadline)
        )
        return response.model.name

    def infer(self, model: str, image: np.ndarray) -> np.ndarray:
        request = inference_pb2.InferRequest(model=model, input=to_tensor(image))
        response = call_with_retry(
            "inference", lambda: self._stub.Infer(request, timeout=self._deadline)
        )
        return from_tensor(response.output, "model output")

    def benchmark(self, model: str, image: np.ndarray, options: TimingOptions,
                  measure_memory: bool = False) -> DeviceTiming:
        response = self._benchmark(model, "", image, options, measure_memory)
        return timing_from_proto(response.timing)

    def compare(self, model: str, baseline: str, image: np.ndarray, options: TimingOptions,
                measure_memory: bool = False) -> RuntimeComparison:
        response = self._benchmark(model, baseline, image, options, measure_memory)
        return RuntimeComparison(
            solution=timing_from_proto(response.timing),
            baseline=timing_from_proto(response.baseline_timing),
            speed_ratio=response.speed_ratio,
            ratio_ci95_low=response.speed_ratio_ci95_low,
            ratio_ci95_high=response.speed_ratio_ci95_high,
        )

    def _benchmark(self, model: str, baseline: str, image: np.ndarray, options: TimingOptions,
                   measure_memory: bool) -> inference_pb2.BenchmarkResponse:
        request = inference_pb2.BenchmarkRequest(
            model=model,
            baseline_model=baseline,
            input=to_tensor(image),
            device=common_pb2.DEVICE_UNSPECIFIED,
            options=inference_pb2.TimingOptions(
                warmup_runs=options.warmup_runs, min_runs=options.min_runs,
                min_seconds=options.min_seconds, max_runs=options.max_runs,
            ),
            measure_memory=measure_memory,
        )
        return call_with_retry(
            "inference", lambda: self._stub.Benchmark(request, timeout=self._deadline)
        )

    def close(self) -> None:
        self._channel.close()


class MetricsClient:
    def __init__(self, target: str, max_message_mb: int, deadline_s: float = 120.0) -> None:
        self._channel = open_channel(target, max_message_mb)
        self._stub = metrics_pb2_grpc.MetricsServiceStub(self._channel)
        self._deadline = deadline_s

    def evaluate(
        self, output: np.ndarray, target: np.ndarray, options: QualityOptions
    ) -> PairQuality:
        request = metrics_pb2.EvaluateRequest(
            output=to_tensor(output),
            target=to_tensor(target),
            options=metrics_pb2.QualityOptions(
                crop_border=options.crop_border,
                clip_psnr_input=options.clip_psnr_input,
                clip_msssim_input=options.clip_msssim_input,
                msssim_flavor=FLAVOR_MESSAGES[options.flavor],
            ),
        )
        response = call_with_retry(
            "metrics", lambda: self._stub.Evaluate(request, timeout=self._deadline)
        )
        return PairQuality(psnr=response.psnr, msssim=response.msssim)

    def close(self) -> None:
        self._channel.close()
