"""Property-based tests (hypothesis) on every decoder of untrusted bytes and on the request
messages of the services: whatever arrives, the answer is a result or a clear client error
(INVALID_ARGUMENT and kin), never an internal error, and the service keeps serving."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pirm.v1 import common_pb2, metrics_pb2, metrics_pb2_grpc, scorer_pb2, scorer_pb2_grpc

from services.core.errors import InvalidArgument
from services.core.tensors import from_tensor
from services.inference.graphs import parse_graph
from services.scorer.protocol import read_rgb
from services.scorer.samples import srcnn_graph_def
from tests.cluster import Cluster
from tests.integration.helpers import is_serving

# What a client may be told; INTERNAL or UNKNOWN would mean a decoder let something through.
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

tensors = st.builds(
    common_pb2.Tensor,
    dtype=st.integers(min_value=-1, max_value=6),
    shape=st.lists(st.integers(min_value=-2, max_value=2**40), max_size=5),
    content=st.binary(max_size=512),
)


@FUZZ
@given(tensor=tensors)
def test_tensor_decoder(tensor: common_pb2.Tensor) -> None:
    try:
        array = from_tensor(tensor)
    except InvalidArgument:
        return
    assert array.nbytes == len(tensor.content)
    assert list(array.shape) == list(tensor.shape)


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return srcnn_graph_def(seed=5)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_graph_decoder_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(InvalidArgument):
        parse_graph("fuzz", data, "", "", 1 << 20)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)),
                      min_size=1, max_size=8))
def test_graph_decoder_on_corrupted_models(model_bytes: bytes,
                                           flips: list[tuple[int, int]]) -> None:
    data = bytearray(model_bytes)
    for position, mask in flips:
        data[position % len(data)] ^= mask
    with contextlib.suppress(InvalidArgument):
        parse_graph("fuzz", bytes(data), "", "", 1 << 30)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_image_decoder_on_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    try:
        image = read_rgb(path)
    except InvalidArgument:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb's first bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(5000, 5000))  # 25 megapixels from a few hundred bytes
    assert bomb.stat().st_size < 1000
    with pytest.raises(InvalidArgument, match="5000x5000 = 25,000,000 pixels; the limit is"):
        read_rgb(bomb)
    bomb.write_bytes(png_claiming(60_000, 60_000))  # beyond PIL's own guard: refused too
    with pytest.raises(InvalidArgument, match="decompression bomb"):
        read_rgb(bomb)
    ordinary = io.BytesIO()
    Image.new("RGB", (40, 30)).save(ordinary, "PNG")
    (tmp_path / "ok.png").write_bytes(ordinary.getvalue())
    assert read_rgb(tmp_path / "ok.png").shape == (30, 40, 3)


def answered_clearly(call: object) -> None:
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() in CLIENT_ERRORS, (error.code(), error.details())


@FUZZ
@given(output=tensors, target=tensors, border=st.integers(-5, 100_000),
       flavor=st.integers(-1, 5))
def test_metrics_requests(metrics_stub: metrics_pb2_grpc.MetricsServiceStub,
                          output: common_pb2.Tensor, target: common_pb2.Tensor, border: int,
                          flavor: int) -> None:
    request = metrics_pb2.EvaluateRequest(
        output=output, target=target,
        options=metrics_pb2.QualityOptions(crop_border=border, msssim_flavor=flavor))
    answered_clearly(lambda: metrics_stub.Evaluate(request, timeout=60))


@FUZZ
@given(track=st.integers(-1, 5), phase=st.integers(-1, 5), graph=st.binary(max_size=256),
       dataset=st.text(max_size=40), mos=st.one_of(st.none(), st.floats()),
       team=st.text(max_size=20), request_id=st.text(max_size=20))
def test_scorer_submissions(scorer_stub: scorer_pb2_grpc.ScorerServiceStub, track: int,
                            phase: int, graph: bytes, dataset: str, mos: float | None, team: str,
                            request_id: str) -> None:
    request = scorer_pb2.SubmitJobRequest(track=track, phase=phase, graph_def=graph,
                                          dataset=dataset, team=team, request_id=request_id)
    if mos is not None:
        request.mos = mos
    answered_clearly(lambda: scorer_stub.SubmitJob(request, timeout=60))


def test_services_still_serve_after_the_fuzzing(cluster: Cluster) -> None:
    for running in (cluster.inference, cluster.metrics, cluster.scorer):
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            assert is_serving(channel)
