"""The calls `pirm batch` makes, through the real `kubernetes` client with its HTTP transport
(urllib3's PoolManager) replaced by a recorder that answers like an API server."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from kubernetes import client

from services.batch import api
from services.batch.job import BatchSpec, build_job, manifest
from services.cli.main import main

NAMESPACE = "eval"
NAME = "pirm-batch-a-20261125-142501"
JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
SPEC = BatchSpec(name=NAME, track="A", models="models", data="div2k", shards=2,
                 namespace=NAMESPACE)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FakeApiServer:
    """Stands in for urllib3.PoolManager: records each request and answers it with the next
    canned (status, JSON body) for its method and path."""

    def __init__(self, answers: dict[tuple[str, str], list[tuple[int, bytes]]]) -> None:
        self.answers = answers
        self.requests: list[Request] = []

    def request(self, method: str, url: str, body: str | None = None,
                headers: dict[str, str] | None = None, **_: Any) -> urllib3.HTTPResponse:
        parts = urlsplit(url)
        self.requests.append(Request(method, parts.path, parse_qs(parts.query), headers or {},
                                     json.loads(body) if body else None))
        status, payload = self.answers[(method, parts.path)].pop(0)
        return urllib3.HTTPResponse(body=io.BytesIO(payload), status=status,
                                    reason=HTTPStatus(status).phrase,
                                    headers={"Content-Type": "application/json"},
                                    preload_content=False)

    def clear(self) -> None:
        """PoolManager's, called when an ApiClient closes."""


def job_json(**status: Any) -> dict[str, Any]:
    job = manifest(build_job(SPEC))
    job["metadata"].update(uid="0c6f", resourceVersion=str(len(status)))
    job["status"] = status
    return job


def watch_events(*jobs: dict[str, Any]) -> bytes:
    """A watch response: one JSON event per line, as the API server streams them."""
    kinds = ["ADDED"] + ["MODIFIED"] * (len(jobs) - 1)
    return b"".join(json.dumps({"type": t, "object": j}).encode() + b"\n"
                    for t, j in zip(kinds, jobs, strict=True))


def pod_list(*phases: str) -> bytes:
    return json.dumps({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
        {"metadata": {"name": f"{NAME}-{i}-x7k2p",
                      "annotations": {api.INDEX_ANNOTATION: str(i)}},
         "status": {"phase": phase}}
        for i, phase in enumerate(phases)
    ]}).encode()


RUNNING = job_json(active=2, ready=2)
COMPLETE = job_json(succeeded=2, completedIndexes="0-1", conditions=[
    {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}])


def cluster_answers() -> dict[tuple[str, str], list[tuple[int, bytes]]]:
    return {
        ("POST", JOBS): [(201, json.dumps(job_json()).encode())],
        ("GET", JOBS): [(200, watch_events(RUNNING, COMPLETE))],
        ("GET", PODS): [(200, pod_list("Running", "Pending")),
                        (200, pod_list("Succeeded", "Succeeded"))],
    }


@pytest.fixture
def server() -> FakeApiServer:
    return FakeApiServer(cluster_answers())


@pytest.fixture
def kubernetes(server: FakeApiServer) -> client.ApiClient:
    configuration = client.Configuration(host="https://k8s.test:6443")
    api_client = client.ApiClient(configuration)
    api_client.rest_client.pool_manager = server  # type: ignore[assignment]
    return api_client


def test_create_job_posts_the_job(server: FakeApiServer, kubernetes: client.ApiClient) -> None:
    created = api.create_job(kubernetes, NAMESPACE, build_job(SPEC))
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", JOBS)
    assert request.body == manifest(build_job(SPEC))
    assert request.body["spec"]["completionMode"] == "Indexed"
    assert created.metadata is not None and created.metadata.uid == "0c6f"


def test_follow_job_watches_it_and_reads_its_pods_until_it_completes(
    server: FakeApiServer, kubernetes: client.ApiClient,
) -> None:
    reports = list(api.follow_job(kubernetes, NAMESPACE, NAME))
    watch, pods_1, pods_2 = server.requests
    assert (watch.method, watch.path) == ("GET", JOBS)
    assert watch.query == {"fieldSelector": [f"metadata.name={NAME}"], "watch": ["true"]}
    for pods in (pods_1, pods_2):
        assert (pods.method, pods.path) == ("GET", PODS)
        assert pods.query == {"labelSelector": [f"job-name={NAME}"]}
    assert [r.outcome for r in reports] == [None, "Complete"]
    assert reports[0].summary() == (
        f"{NAME}: 0/2 shards done, 2 running (shard 0 Running, shard 1 Pending)")
    assert reports[1].summary() == f"{NAME}: 2/2 shards done, 0 running"


def test_a_failed_job_reports_its_failed_shards() -> None:
    failed = client.ApiClient().deserialize(json.dumps(job_json(
        succeeded=1, failed=3, failedIndexes="1",
        conditions=[{"type": "Failed", "status": "True"}])), "V1Job", "application/json")
    progress = api.job_progress(failed, [api.ShardPod(1, f"{NAME}-1-a", "Failed")])
    assert progress.outcome == "Failed"
    assert progress.summary() == f"{NAME}: 1/2 shards done, 0 running, failed shards 1"


def write_kubeconfig(folder: Path) -> Path:
    path = folder / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://k8s.test:6443"}}],
        "users": [{"name": "dev", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "dev"}}],
    }))
    return path


def test_pirm_batch_creates_follows_and_points_to_the_leaderboard(
    server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command as a user runs it: kubeconfig, then the same requests."""
    monkeypatch.setattr(client.rest.urllib3, "PoolManager", lambda **_: server)
    monkeypatch.setattr("services.batch.job.batch_job_name", lambda track: NAME)
    monkeypatch.setattr(client.Configuration, "_default", None)  # load_kube_config sets it

    with pytest.raises(SystemExit) as exit_:
        main(["batch", "--track", "A", "--models", "models", "--data", "div2k", "--shards", "2",
              "--namespace", NAMESPACE, "--kubeconfig", str(write_kubeconfig(tmp_path))])
    assert exit_.value.code == 0
    assert [(r.method, r.path) for r in server.requests] == [
        ("POST", JOBS), ("GET", JOBS), ("GET", PODS), ("GET", PODS)]
    assert all(r.headers["authorization"] == "Bearer t0ken" for r in server.requests)
    assert server.requests[0].body == manifest(build_job(SPEC))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"created job {NAMESPACE}/{NAME}: 2 shards"
    assert out[-1] == (f"job {NAME}: Complete. Results are on the scorer's leaderboard: "
                       "pirm leaderboard --track A")


def test_pirm_batch_reports_a_refused_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    conflict = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason":
                "AlreadyExists", "code": 409, "message": f'jobs.batch "{NAME}" already exists'}
    server = FakeApiServer({("POST", JOBS): [(409, json.dumps(conflict).encode())]})
    monkeypatch.setattr(client.rest.urllib3, "PoolManager", lambda **_: server)
    monkeypatch.setattr(client.Configuration, "_default", None)
    with pytest.raises(SystemExit) as exit_:
        main(["batch", "--track", "A", "--models", "m", "--data", "d", "--namespace", NAMESPACE,
              "--kubeconfig", str(write_kubeconfig(tmp_path))])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f'pirm: Kubernetes API: 409 Conflict: jobs.batch "{NAME}" already exists\n')
