"""The metrics service over gRPC against the float64 references."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from pirm.v1 import metrics_pb2, metrics_pb2_grpc

from services.core.tensors import to_tensor
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


def _pairs(count: int, side: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    pairs = []
    for _ in range(count):
        target = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        output = np.clip(target / 255.0 + rng.normal(0, 0.05, target.shape), 0, 1)
        pairs.append((output.astype(np.float32), target))
    return pairs


NUMPY_B = metrics_pb2.QualityOptions(clip_psnr_input=True,
                                     msssim_flavor=metrics_pb2.MSSSIM_FLAVOR_NUMPY)


def _expected(output: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    t = target.astype(np.float32) / np.float32(255)
    return (psnr_ref(output, t),
            msssim_numpy_ref(output.astype(np.float64) * 255, t.astype(np.float64) * 255))


def test_batch_and_stream_keep_the_order_of_the_pairs(metrics_stub: Stub) -> None:
    pairs = _pairs(12)
    requests = [metrics_pb2.EvaluateRequest(output=to_tensor(o), target=to_tensor(t),
                                            options=NUMPY_B) for o, t in pairs]
    batch = metrics_stub.EvaluateBatch(metrics_pb2.EvaluateBatchRequest(pairs=requests),
                                       timeout=60).results
    stream = list(metrics_stub.EvaluateStream(iter(requests), timeout=60))
    for (output, target), b, s in zip(pairs, batch, stream, strict=True):
        expected_psnr, expected_msssim = _expected(output, target)
        for result in (b, s):
            assert abs(result.psnr - expected_psnr) < 1e-4
            assert abs(result.msssim - expected_msssim) < 1e-6


def test_a_bad_pair_in_a_batch_is_named(metrics_stub: Stub) -> None:
    (output, target), = _pairs(1)
    good = metrics_pb2.EvaluateRequest(output=to_tensor(output), target=to_tensor(target),
                                       options=NUMPY_B)
    bad = metrics_pb2.EvaluateRequest(output=to_tensor(output[:50]), target=to_tensor(target),
                                      options=NUMPY_B)
    with pytest.raises(grpc.RpcError) as error:
        metrics_stub.EvaluateBatch(metrics_pb2.EvaluateBatchRequest(pairs=[good, good, bad]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error.value.details()).startswith("pair 2:")
    with pytest.raises(grpc.RpcError) as error:
        list(metrics_stub.EvaluateStream(iter([good, bad])))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pair 1:" in error.value.details()


def test_y_channel_and_single_scale_ssim_over_grpc(metrics_stub: Stub) -> None:
    (output, target), = _pairs(1, side=200)
    options = metrics_pb2.QualityOptions(channel=metrics_pb2.CHANNEL_Y, with_ssim=True,
                                         msssim_flavor=metrics_pb2.MSSSIM_FLAVOR_TF)
    response = _evaluate(metrics_stub, output, target, options)
    weights = np.array([65.481, 128.553, 24.966])
    y_out = ((16 + output.astype(np.float64) @ weights) / 255)[..., None]
    y_ref = ((16 + (target.astype(np.float32) / np.float32(255)).astype(np.float64) @ weights)
             / 255)[..., None]
    assert abs(response.psnr - psnr_ref(y_out, y_ref)) < 1e-4
    assert abs(response.msssim - msssim_tf_ref(y_out, y_ref)) < 1e-6
    assert response.HasField("ssim") and 0 < response.ssim <= 1
