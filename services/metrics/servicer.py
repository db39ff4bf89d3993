"""gRPC <-> domain translation for the metrics service; the maths lives in quality.py."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
from pirm.v1 import metrics_pb2, metrics_pb2_grpc

from services.core.errors import InvalidArgument
from services.core.quality import (
    PairQuality,
)
from services.core.tensors import as_unit_float32, from_tensor
from services.core.wire import quality_options
from services.metrics.quality import evaluate_batch, evaluate_pair


def pair_of(request: metrics_pb2.EvaluateRequest) -> tuple[np.ndarray, np.ndarray]:
    return (as_unit_float32(from_tensor(request.output, "output")),
            as_unit_float32(from_tensor(request.target, "target")))


def response_of(quality: PairQuality) -> metrics_pb2.EvaluateResponse:
    return metrics_pb2.EvaluateResponse(psnr=quality.psnr, msssim=quality.msssim,
                                        ssim=quality.ssim)


def evaluate(request: metrics_pb2.EvaluateRequest, index: int | None = None
             ) -> metrics_pb2.EvaluateResponse:
    try:
        output, target = pair_of(request)
        quality = evaluate_pair(output, target, quality_options(request.options))
    except InvalidArgument as error:
        if index is None:
            raise
        raise InvalidArgument(f"pair {index}: {error}") from error
    return response_of(quality)


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def Evaluate(
        self, request: metrics_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.EvaluateResponse:
        return evaluate(request)

    def EvaluateBatch(
        self, request: metrics_pb2.EvaluateBatchRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.EvaluateBatchResponse:
        options = {pair.options.SerializeToString() for pair in request.pairs}
        if len(options) > 1:  # mixed options: one pair after the other
            return metrics_pb2.EvaluateBatchResponse(
                results=[evaluate(pair, index) for index, pair in enumerate(request.pairs)]
            )
        pairs = []
        for index, pair in enumerate(request.pairs):
            try:
                pairs.append(pair_of(pair))
            except InvalidArgument as error:
                raise InvalidArgument(f"pair {index}: {error}") from error
        shared = quality_options(request.pairs[0].options) if request.pairs else None
        results = evaluate_batch(pairs, shared) if shared else []
        return metrics_pb2.EvaluateBatchResponse(results=[response_of(q) for q in results])

    def EvaluateStream(
        self, requests: Iterator[metrics_pb2.EvaluateRequest], context: grpc.ServicerContext
    ) -> Iterator[metrics_pb2.EvaluateResponse]:
        for index, request in enumerate(requests):
            yield evaluate(request, index)
