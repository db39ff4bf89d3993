"""The metrics service over gRPC against the float64 references."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from pirm.v1 import metrics_pb2, metrics_pb2_grpc

from services.common.tensors import to_tensor
from tests.reference import msssim_numpy_ref, msssim_tf_ref, psnr_ref, track_a_input_ref

Stub = metrics_pb2_grpc.MetricsServiceStub
TRACK_A = metrics_pb2.QualityOptions(crop_border=16, clip_psnr_input=True, clip_msssim_input=True,
                                     msssim_flavor=metrics_pb2.MSSSIM_FLAVOR_TF)


def _evaluate(stub: Stub, output: np.ndarray, target: np.ndarray,
              options: metrics_pb2.QualityOptions) -> metrics_pb2.EvaluateResponse:
    request = metrics_pb2.EvaluateRequest(output=to_tensor(output), target=to_tensor(target),
                                          options=options)
    return stub.Evaluate(request, timeout=60)


def test_hd_pair_track_a_protocol(pirm_data: Path, metrics_stub: Stub) -> None:
    target = np.asarray(Image.open(pirm_data / "div2k" / "HD_res" / "0.png").convert("RGB"))
    output = track_a_input_ref(target).astype(np.float32) / np.float32(255)
    # The target travels as uint8 and is divided by 255 in float32 on the service side.
    response = _evaluate(metrics_stub, output, target, TRACK_A)
    out = np.clip(output[16:-16, 16:-16], 0, 1)
    ref = target[16:-16, 16:-16].astype(np.float32) / np.float32(255)
    assert abs(response.psnr - psnr_ref(out, ref)) < 1e-4
    assert abs(response.msssim - msssim_tf_ref(out, ref)) < 1e-6


def test_patch_track_b_protocol_uses_unclipped_output(metrics_stub: Stub) -> None:
    rng = np.random.default_rng(3)
    target = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    output = (target / 255.0 + rng.normal(0, 0.1, target.shape)).astype(np.float32)
    options = metrics_pb2.QualityOptions(clip_psnr_input=True, clip_msssim_input=False,
                                         msssim_flavor=metrics_pb2.MSSSIM_FLAVOR_NUMPY)
    response = _evaluate(metrics_stub, output, target, options)
    t = target.astype(np.float32) / np.float32(255)
    assert abs(response.psnr - psnr_ref(np.clip(output, 0, 1), t)) < 1e-4
    expected = msssim_numpy_ref(output.astype(np.float64) * 255, t.astype(np.float64) * 255)
    assert abs(response.msssim - expected) < 1e-6


@pytest.mark.parametrize(
    ("output", "target", "flavor", "message"),
    [
        (np.zeros((200, 200, 3), np.float32), np.zeros((200, 190, 3), np.float32),
         metrics_pb2.MSSSIM_FLAVOR_TF, "differ in shape"),
        (np.full((200, 200, 3), np.nan, np.float32), np.zeros((200, 200, 3), np.float32),
         metrics_pb2.MSSSIM_FLAVOR_TF, "NaN"),
        (np.zeros((100, 100, 3), np.float32), np.zeros((100, 100, 3), np.float32),
         metrics_pb2.MSSSIM_FLAVOR_TF, ">= 161 px"),
    ],
)
def test_bad_pairs_are_invalid_argument(metrics_stub: Stub, output: np.ndarray,
                                        target: np.ndarray, flavor: int, message: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        _evaluate(metrics_stub, output, target, metrics_pb2.QualityOptions(msssim_flavor=flavor))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
