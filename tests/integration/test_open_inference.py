"""Standard Open Inference Protocol clients against our inference service: tritonclient, run in
its own environment (build/client-venv) with none of our code; readiness that says what gRPC
health says, from start-up to drain."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference import open_inference_pb2 as oip
from inference import open_inference_pb2_grpc as oip_grpc
from prometheus_client import REGISTRY

from services.common.cluster import free_port
from services.common.server import RunningServer
from services.core.channel import open_channel
from services.inference.engine import EngineSettings
from services.inference.server import OPEN_INFERENCE_NAME, create_server
from tests.integration.helpers import is_serving, slow_graph, wait_for
from tests.official import run_graph

REPO = Path(__file__).resolve().parents[2]
CLIENT_PYTHON = REPO / "build" / "client-venv" / "bin" / "python"
ROUNDTRIP = REPO / "tests" / "clients" / "triton_roundtrip.py"


def test_tritonclient_round_trip_of_a_real_model_from_the_repository(
    pirm_data: Path, tmp_path: Path
) -> None:
    if not CLIENT_PYTHON.exists():
        pytest.skip(f"{CLIENT_PYTHON} is missing: run `make test-tools` to create the client venv")
    pb = pirm_data / "models_pretrained" / "dped_srcnn.pb"
    (tmp_path / "repo" / "srcnn" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "srcnn" / "1" / "model.pb").symlink_to(pb)
    running = create_server("127.0.0.1:0", EngineSettings(repository=tmp_path / "repo"))
    try:
        image = np.random.default_rng(0).random((1, 720, 1280, 3), dtype=np.float32)  # 11 MB
        np.save(tmp_path / "input.npy", image)
        completed = subprocess.run(
            [str(CLIENT_PYTHON), str(ROUNDTRIP), f"127.0.0.1:{running.port}", "srcnn",
             str(tmp_path / "input.npy"), str(tmp_path / "output.npy")],
            capture_output=True, text=True, timeout=300,
        )
        assert completed.returncode == 0, completed.stderr
        seen = json.loads(completed.stdout)
    finally:
        running.stop(grace=0.5)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert not seen["missing_ready"]
    assert set(seen["server"]["extensions"]) >= {"model_configuration", "statistics"}
    meta = seen["metadata"]
    assert meta["platform"] == "tensorflow_graphdef"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32",
                               "shape": ["1", "-1", "-1", "3"]}]
    assert meta["outputs"][0]["name"] == "output"
    assert seen["config"]["config"]["platform"] == "tensorflow_graphdef"
    (stats,) = seen["statistics"]["model_stats"]
    assert stats["name"] == "srcnn" and stats["inference_count"] == "1"
    output = np.load(tmp_path / "output.npy")
    np.testing.assert_allclose(output, run_graph(pb, [image])[0], atol=1e-5)


def test_typed_contents_and_errors(tmp_path: Path) -> None:
    from tests.integration.helpers import graph_bytes

    (tmp_path / "relu" / "1").mkdir(parents=True)
    (tmp_path / "relu" / "1" / "model.pb").write_bytes(
        graph_bytes(lambda tf, x: tf.identity(tf.nn.relu(x), name="output")))
    running = create_server("127.0.0.1:0", EngineSettings(repository=tmp_path))
    try:
        stub = oip_grpc.GRPCInferenceServiceStub(open_channel(f"127.0.0.1:{running.port}", 64))
        values = [-1.0, 0.5] * 6
        tensor = oip.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[1, 2, 2, 3],
            contents=oip.InferTensorContents(fp32_contents=values))
        response = stub.ModelInfer(oip.ModelInferRequest(model_name="relu", inputs=[tensor]))
        output = np.frombuffer(response.raw_output_contents[0], "<f4")
        np.testing.assert_array_equal(output, np.maximum(np.array(values, np.float32), 0))
        assert list(response.outputs[0].shape) == [1, 2, 2, 3]
        bad = oip.ModelInferRequest.InferInputTensor(name="input", datatype="INT32",
                                                     shape=[1, 2, 2, 3])
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(oip.ModelInferRequest(model_name="relu", inputs=[bad]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP32" in error.value.details()
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelMetadata(oip.ModelMetadataRequest(name="absent"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        running.stop(grace=0.5)


def test_readiness_follows_the_engine_from_start_to_drain(tmp_path: Path) -> None:
    (tmp_path / "slow" / "1").mkdir(parents=True)
    (tmp_path / "slow" / "1" / "model.pb").write_bytes(slow_graph())
    port = free_port()
    started: list[RunningServer] = []
    # create_server listens, then starts its TensorFlow worker (seconds), then says SERVING.
    starting = threading.Thread(target=lambda: started.append(create_server(
        f"127.0.0.1:{port}", EngineSettings(repository=tmp_path))))
    starting.start()
    channel = open_channel(f"127.0.0.1:{port}", 64)
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        ready = stub.ServerReady(oip.ServerReadyRequest(), timeout=120, wait_for_ready=True)
        status = health.Check(health_pb2.HealthCheckRequest(service=OPEN_INFERENCE_NAME),
                              timeout=10).status
        assert not ready.ready and status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not stub.ModelReady(oip.ModelReadyRequest(name="slow"), timeout=10).ready
        assert stub.ServerLive(oip.ServerLiveRequest(), timeout=10).live
        starting.join(300)
        (running,) = started
        assert is_serving(channel)
        assert stub.ServerReady(oip.ServerReadyRequest(), timeout=10).ready
        assert stub.ModelReady(oip.ModelReadyRequest(name="slow"), timeout=300).ready

        # Draining: a call in flight holds the server open, a new one is refused.
        image = np.random.default_rng(0).random((1, 1024, 1024, 3), np.float32)
        request = oip.ModelInferRequest(model_name="slow", inputs=[
            oip.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                   shape=list(image.shape))],
            raw_input_contents=[image.tobytes()])
        answered: list[object] = []
        infer = threading.Thread(target=lambda: answered.append(
            stub.ModelInfer(request, timeout=300)))
        infer.start()
        wait_for(lambda: REGISTRY.get_sample_value("grpc_server_requests_in_flight", {
            "grpc_type": "unary", "grpc_service": OPEN_INFERENCE_NAME,
            "grpc_method": "ModelInfer"}) == 1, "the ModelInfer call in flight")
        stopping = threading.Thread(target=lambda: running.stop(grace=300))
        stopping.start()
        wait_for(lambda: not is_serving(channel), "health turning NOT_SERVING")
        assert not stub.ServerReady(oip.ServerReadyRequest(), timeout=10).ready
        assert not stub.ModelReady(oip.ModelReadyRequest(name="slow"), timeout=10).ready
        assert stub.ServerLive(oip.ServerLiveRequest(), timeout=10).live
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelMetadata(oip.ModelMetadataRequest(name="slow"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        infer.join(300)
        assert len(answered) == 1  # the call in flight was answered
        stopping.join(300)
        with pytest.raises(grpc.RpcError) as stopped:
            stub.ServerReady(oip.ServerReadyRequest(), timeout=5)
        assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE  # nothing listens
    finally:
        channel.close()
        starting.join(300)
        for running in started:
            running.stop(None)
