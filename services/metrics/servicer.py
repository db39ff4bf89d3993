"""gRPC <-> domain translation for the metrics service; the maths lives in quality.py."""

from __future__ import annotations

import grpc
from pirm.v1 import metrics_pb2, metrics_pb2_grpc

from services.common.tensors import as_unit_float32, from_tensor
from services.metrics.quality import Flavor, QualityOptions, evaluate_pair

_FLAVORS = {
    metrics_pb2.MSSSIM_FLAVOR_UNSPECIFIED: Flavor.TF,
    metrics_pb2.MSSSIM_FLAVOR_TF: Flavor.TF,
    metrics_pb2.MSSSIM_FLAVOR_NUMPY: Flavor.NUMPY,
}


def quality_options(message: metrics_pb2.QualityOptions) -> QualityOptions:
    return QualityOptions(
        crop_border=message.crop_border,
        clip_psnr_input=message.clip_psnr_input,
        clip_msssim_input=message.clip_msssim_input,
        flavor=_FLAVORS.get(message.msssim_flavor, Flavor.TF),
    )


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def Evaluate(
        self, request: metrics_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.EvaluateResponse:
        output = as_unit_float32(from_tensor(request.output, "output"))
        target = as_unit_float32(from_tensor(request.target, "target"))
        quality = evaluate_pair(output, target, quality_options(request.options))
        return metrics_pb2.EvaluateResponse(psnr=quality.psnr, msssim=quality.msssim)
