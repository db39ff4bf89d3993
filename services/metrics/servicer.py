"""gRPC <-> domain translation for the metrics service; the maths lives in quality.py."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from pirm.v1 import metrics_pb2, metrics_pb2_grpc

from services.common.errors import InvalidArgument
from services.common.tensors import as_unit_float32, from_tensor
from services.metrics.quality import (
    Channel,
    Flavor,
    NegativePolicy,
    QualityOptions,
    SmallPolicy,
    evaluate_pair,
)

_FLAVORS = {
    metrics_pb2.MSSSIM_FLAVOR_UNSPECIFIED: Flavor.TF,
    metrics_pb2.MSSSIM_FLAVOR_TF: Flavor.TF,
    metrics_pb2.MSSSIM_FLAVOR_NUMPY: Flavor.NUMPY,
}
FLAVOR_MESSAGES = {Flavor.TF: metrics_pb2.MSSSIM_FLAVOR_TF,
                   Flavor.NUMPY: metrics_pb2.MSSSIM_FLAVOR_NUMPY}
_CHANNELS = {metrics_pb2.CHANNEL_UNSPECIFIED: Channel.RGB, metrics_pb2.CHANNEL_RGB: Channel.RGB,
             metrics_pb2.CHANNEL_Y: Channel.Y}
_NEGATIVE = {metrics_pb2.NEGATIVE_POLICY_UNSPECIFIED: None,
             metrics_pb2.NEGATIVE_POLICY_RELU: NegativePolicy.RELU,
             metrics_pb2.NEGATIVE_POLICY_NAN: NegativePolicy.NAN,
             metrics_pb2.NEGATIVE_POLICY_ERROR: NegativePolicy.ERROR}
_SMALL = {metrics_pb2.SMALL_POLICY_UNSPECIFIED: None,
          metrics_pb2.SMALL_POLICY_ERROR: SmallPolicy.ERROR,
          metrics_pb2.SMALL_POLICY_SHRINK_WINDOW: SmallPolicy.SHRINK_WINDOW}


def quality_options(message: metrics_pb2.QualityOptions) -> QualityOptions:
    return QualityOptions(
        crop_border=message.crop_border,
        clip_psnr_input=message.clip_psnr_input,
        clip_msssim_input=message.clip_msssim_input,
        flavor=_FLAVORS.get(message.msssim_flavor, Flavor.TF),
        channel=_CHANNELS.get(message.channel, Channel.RGB),
        negative=_NEGATIVE.get(message.negative_contrast),
        small=_SMALL.get(message.small_images),
        tf_compat=message.tf_compat,
        with_ssim=message.with_ssim,
    )


def evaluate(request: metrics_pb2.EvaluateRequest, index: int | None = None
             ) -> metrics_pb2.EvaluateResponse:
    try:
        output = as_unit_float32(from_tensor(request.output, "output"))
        target = as_unit_float32(from_tensor(request.target, "target"))
        quality = evaluate_pair(output, target, quality_options(request.options))
    except InvalidArgument as error:
        if index is None:
            raise
        raise InvalidArgument(f"pair {index}: {error}") from error
    return metrics_pb2.EvaluateResponse(psnr=quality.psnr, msssim=quality.msssim,
                                        ssim=quality.ssim)


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def Evaluate(
        self, request: metrics_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.EvaluateResponse:
        return evaluate(request)

    def EvaluateBatch(
        self, request: metrics_pb2.EvaluateBatchRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.EvaluateBatchResponse:
        return metrics_pb2.EvaluateBatchResponse(
            results=[evaluate(pair, index) for index, pair in enumerate(request.pairs)]
        )

    def EvaluateStream(
        self, requests: Iterator[metrics_pb2.EvaluateRequest], context: grpc.ServicerContext
    ) -> Iterator[metrics_pb2.EvaluateResponse]:
        for index, request in enumerate(requests):
            yield evaluate(request, index)
