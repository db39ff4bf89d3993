"""Standard Open Inference Protocol clients against our inference service: tritonclient, run in
its own environment (build/client-venv) with none of our code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from inference import open_inference_pb2 as oip
from inference import open_inference_pb2_grpc as oip_grpc

from services.common.server import open_channel
from services.inference.engine import EngineSettings
from services.inference.server import create_server
from tests.official import run_graph

REPO = Path(__file__).resolve().parents[2]
CLIENT_PYTHON = REPO / "build" / "client-venv" / "bin" / "python"
ROUNDTRIP = REPO / "tests" / "clients" / "triton_roundtrip.py"


def test_tritonclient_round_trip_of_a_real_model_from_the_repository(
    pirm_data: Path, tmp_path: Path
) -> None:
    if not CLIENT_PYTHON.exists():
        pytest.skip(f"{CLIENT_PYTHON} is missing: run `make setup` to create the client venv")
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
