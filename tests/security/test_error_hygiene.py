"""Errors leak nothing: an unexpected exception reaches its caller (who may be any team) as an
incident id only, while the exception and its stack go to the server's log under that id. Seen
through the three places that answer callers: the gRPC bootstrap's error mapping, a TensorFlow
process's report to the inference server, and a scorer job's error."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pirm.v1 import metrics_pb2, metrics_pb2_grpc, scorer_pb2

from services.client import ScorerClient
from services.common.cluster import free_port
from services.common.logs import JsonFormatter
from services.common.server import ServiceBinding, create_server
from services.core.channel import open_channel
from services.core.errors import InvalidArgument, PirmError
from services.core.track import Phase, Track
from services.inference.worker import call_in_fresh_process
from services.scorer.jobs import JobSpec
from services.scorer.samples import srcnn_graph_def
from services.scorer.store import JobStore
from tests.cluster import sample_dataset, start_scorer
from tests.integration.helpers import wait_for

SECRET = "/srv/organisers/holdout-test-set/team-beta.pb"  # what no caller may see
INCIDENT = re.compile(r"^internal error \(incident ([0-9a-f]{8})\); the organisers can look it "
                      r"up in the server's log$")


def incident_of(text: str) -> str:
    """The incident id of a caller's error text, which must hold nothing else."""
    found = INCIDENT.match(text)
    assert found, f"not an incident-only text: {text!r}"
    return found.group(1)


def logged(caplog: pytest.LogCaptureFixture, incident: str) -> dict[str, object]:
    """The one log record of `incident`, as the server's JSON log line says it."""
    records = [r for r in caplog.records if getattr(r, "incident", None) == incident]
    assert len(records) == 1, f"incident {incident}: {len(records)} log records"
    return dict(json.loads(JsonFormatter().format(records[0])))


class LeakyMetrics(metrics_pb2_grpc.MetricsServiceServicer):
    """Fails unexpectedly with a message naming a private path, answering as a call and as a
    stream; a domain error keeps its own message; EvaluateBatch answers normally."""

    def Evaluate(self, request: metrics_pb2.EvaluateRequest,
                 context: grpc.ServicerContext) -> metrics_pb2.EvaluateResponse:
        if request.options.crop_border < 0:
            raise InvalidArgument("crop_border must be at least 0")
        raise ValueError(f"cannot open {SECRET}")

    def EvaluateStream(self, requests: Iterator[metrics_pb2.EvaluateRequest],
                       context: grpc.ServicerContext) -> Iterator[metrics_pb2.EvaluateResponse]:
        for _ in requests:
            yield metrics_pb2.EvaluateResponse(psnr=1.0)
        raise KeyError(SECRET)

    def EvaluateBatch(self, request: metrics_pb2.EvaluateBatchRequest,
                      context: grpc.ServicerContext) -> metrics_pb2.EvaluateBatchResponse:
        return metrics_pb2.EvaluateBatchResponse()


def test_an_unexpected_error_reaches_the_caller_as_an_incident_id_only(
        caplog: pytest.LogCaptureFixture) -> None:
    name = metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name
    running = create_server("127.0.0.1:0", [ServiceBinding(
        name, metrics_pb2_grpc.add_MetricsServiceServicer_to_server, LeakyMetrics())], 64)
    running.mark_serving()
    channel = open_channel(f"127.0.0.1:{running.port}", 64)
    stub = metrics_pb2_grpc.MetricsServiceStub(channel)
    try:
        with pytest.raises(grpc.RpcError) as unary:
            stub.Evaluate(metrics_pb2.EvaluateRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as stream:
            list(stub.EvaluateStream(iter([metrics_pb2.EvaluateRequest()]), timeout=10))
        with pytest.raises(grpc.RpcError) as domain:
            stub.Evaluate(metrics_pb2.EvaluateRequest(
                options=metrics_pb2.QualityOptions(crop_border=-1)), timeout=10)
        # The service lives on: other calls are answered, health says SERVING.
        stub.EvaluateBatch(metrics_pb2.EvaluateBatchRequest(), timeout=10)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
        running.stop(grace=0.5)
    assert domain.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # kept as it was
    assert domain.value.details() == "crop_border must be at least 0"
    incidents = []
    for call, method, kind in ((unary, "Evaluate", "ValueError"),
                               (stream, "EvaluateStream", "KeyError")):
        assert call.value.code() == grpc.StatusCode.INTERNAL
        details = str(call.value.details())
        assert SECRET not in details and kind not in details and method not in details
        incident = incident_of(details)
        line = logged(caplog, incident)
        assert line["level"] == "error" and line["method"] == f"/{name}/{method}"
        assert kind in str(line["exc"]) and SECRET in str(line["exc"])
        assert "Traceback" in str(line["exc"])  # the stack, for the organisers
        incidents.append(incident)
    assert incidents[0] != incidents[1]


def _fails_in_the_worker(path: str) -> None:
    raise FileNotFoundError(f"[Errno 2] No such file or directory: {path!r}")


def test_an_unexpected_error_in_a_tensorflow_process_is_an_incident(
        caplog: pytest.LogCaptureFixture) -> None:
    # The pipe protocol of every TensorFlow process (worker, spare, probe) in a real spawned one.
    with pytest.raises(PirmError) as failed:
        call_in_fresh_process(_fails_in_the_worker, (SECRET,), name="pirm-test-incident",
                              timeout_s=120, task="the test call")
    assert type(failed.value) is PirmError  # INTERNAL on the wire
    text = str(failed.value)
    assert SECRET not in text and "FileNotFoundError" not in text
    line = logged(caplog, incident_of(text))
    assert line["msg"] == "unexpected error in a TensorFlow process"
    assert "FileNotFoundError" in str(line["exc"]) and SECRET in str(line["exc"])
    assert "_fails_in_the_worker" in str(line["exc"])  # the worker's own stack


def test_a_job_that_crashes_fails_with_an_incident_id_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A store damaged by hand: text where the model's bytes should be (TypeError on reading).
    store_path = tmp_path / "scorer.db"
    dataset = sample_dataset(tmp_path, Track.B, patches_per_photo=1)
    store = JobStore(store_path)
    job, _ = store.create_job(JobSpec(
        track=Track.B, phase=Phase.VALIDATION, dataset=str(dataset), model_sha256="ab" * 32,
        team="beta"), srcnn_graph_def())
    store.close()
    with sqlite3.connect(store_path) as db:
        db.execute("UPDATE models SET data = ?", (SECRET,))
    # Nothing listens at inference and metrics: the job fails before it needs them.
    scorer = start_scorer(free_port(), free_port(), store_path, tmp_path)
    try:
        with ScorerClient(f"127.0.0.1:{scorer.port}") as client:
            wait_for(lambda: client.get(job.job_id).state == scorer_pb2.JOB_STATE_FAILED,
                     "the job failing", timeout_s=120)
            error = client.get(job.job_id).error
    finally:
        scorer.stop(grace=1.0)
    assert SECRET not in error and "TypeError" not in error
    line = logged(caplog, incident_of(error))
    assert line["msg"] == "job crashed" and line["job_id"] == job.job_id
    assert "TypeError" in str(line["exc"])

