"""Observability end to end: the three services as processes (as `pirm up` runs them) export
Prometheus metrics, a real Prometheus scrapes them with the checked-in scrape config, and the
Grafana dashboard's own queries show a job's images."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import yaml
from pirm.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

from services.common.cluster import SERVICES, LocalCluster, free_port
from services.core.channel import ChannelSecurity, open_channel
from services.core.track import Track
from services.scorer.samples import REPO_ROOT
from tests.cluster import sample_dataset
from tests.integration.helpers import graph_bytes, scrape, total, wait_job

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "pirm.json"
SCRAPE_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
PATCHES = 8  # make_sample_dataset: 4 photos x 2 patches
# What Grafana puts in for its variables: a rate window of a few scrape intervals at the
# default 15 s (stretched here so that a finished job stays in it), the dashboard's range.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h"}

# Issue 6: the families each service must show with non-zero values after a job (summed over
# their labels), and those that are rightly zero after a clean job but must be there.
NON_ZERO = {
    "inference": ["pirm_inference_model_loads_total", "pirm_inference_model_load_failures_total",
                  "pirm_inference_models_loaded", "pirm_inference_model_run_seconds_count",
                  "pirm_inference_images_total", "pirm_inference_device_lock_wait_seconds_count",
                  "pirm_inference_model_peak_memory_bytes"],
    "metrics": ["pirm_metrics_pairs_total", "pirm_metrics_pixels_total",
                "pirm_metrics_compute_seconds_count"],
    "scorer": ["pirm_scorer_jobs_submitted_total", "pirm_scorer_jobs_finished_total",
               "pirm_scorer_job_duration_seconds_count", "pirm_scorer_images_evaluated_total",
               "pirm_scorer_stage_duration_seconds_count"],
}
NON_ZERO_EVERYWHERE = ["grpc_server_started_total", "grpc_server_handled_total",
                       "grpc_server_handling_seconds_count", "process_cpu_seconds_total",
                       "process_resident_memory_bytes"]
PRESENT = {"inference": ["pirm_inference_worker_restarts_total"],
           "metrics": [], "scorer": ["pirm_scorer_queue_depth", "pirm_scorer_jobs_running"]}
PRESENT_EVERYWHERE = ["grpc_server_requests_in_flight"]



def tiny_graph(scale: float) -> bytes:
    """A model that costs next to nothing, so that the test measures the plumbing."""
    return graph_bytes(lambda tf, x: tf.identity(x * scale + 0.02, name="output"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("observed")
    baseline = state / "baseline.pb"
    baseline.write_bytes(tiny_graph(1.0))
    cluster = LocalCluster(
        ports={s: free_port() for s in SERVICES},
        metrics_ports={s: free_port() for s in SERVICES},
        log_dir=state / "logs",
        restart=False,
        extra_env={
            "PIRM_STORE": str(state / "scorer.db"), "PIRM_STATE_DIR": str(state),
            "PIRM_BASELINE_A": str(baseline), "PIRM_BASELINE_B": str(baseline),
            "PIRM_TIMING_WARMUP_RUNS": "1", "PIRM_TIMING_MIN_RUNS": "2",
            "PIRM_TIMING_MIN_SECONDS": "0", "PIRM_TIMING_MAX_RUNS": "3",
        },
    )
    cluster.start()
    yield cluster
    cluster.stop()


@dataclass
class Prometheus:
    url: str

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:  # not listening yet
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr` now; fails on a query Prometheus rejects."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", (expr, answer)
        return list(answer["data"]["result"])


@pytest.fixture(scope="module")
def prometheus(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Prometheus | None]:
    """A real Prometheus on a free loopback port, scraping the cluster every second with the
    checked-in scrape config (targets replaced by the test's ports); None without the binary."""
    binary = shutil.which("prometheus")
    if binary is None:
        yield None
        return
    folder = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        port = cluster.metrics_ports[job["job_name"].removeprefix("pirm-")]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(folder / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=log, stderr=log,
        )
    try:
        server = Prometheus(f"http://127.0.0.1:{port}")
        eventually(server.ready, 30, "Prometheus did not start")
        # Every target scraped once before the job: counters must be seen at 0 first, or
        # increase() cannot count what happened before their first sample.
        eventually(lambda: len(server.query('up{job=~"pirm-.*"} == 1')) == len(SERVICES), 60,
                   "Prometheus did not scrape the three services")
        yield server
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def finished_job(cluster: LocalCluster, prometheus: Prometheus | None,
                 tmp_path_factory: pytest.TempPathFactory) -> scorer_pb2.Job:
    """One successful track-B job, and one refused submission (an error for the error panels)."""
    dataset = sample_dataset(tmp_path_factory.mktemp("samples"), Track.B,
                                  patches_per_photo=2)
    stub = scorer_pb2_grpc.ScorerServiceStub(open_channel(
        cluster.target("scorer"), 64, ChannelSecurity(cluster.token())))
    request = scorer_pb2.SubmitJobRequest(track=common_pb2.TRACK_B, dataset=str(dataset),
                                          graph_def=tiny_graph(0.9), team="observed")
    with pytest.raises(grpc.RpcError) as refused:
        stub.SubmitJob(scorer_pb2.SubmitJobRequest(track=common_pb2.TRACK_B,
                                                   dataset=str(dataset), graph_def=b"\x01" * 64),
                       timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    job = wait_job(stub, stub.SubmitJob(request, timeout=60).job_id, timeout_s=300)
    assert job.state == scorer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.result.images == PATCHES
    return job


def test_each_service_exports_its_metrics_after_a_job(
    cluster: LocalCluster, finished_job: scorer_pb2.Job
) -> None:
    # The runner counts a finished job just after storing its state, which WatchJob reports.
    eventually(lambda: total(scrape(cluster.metrics_ports["scorer"]),
                             "pirm_scorer_jobs_finished_total") == 1, 10, "no finished job")
    scraped = {service: scrape(cluster.metrics_ports[service]) for service in SERVICES}
    for service, samples in scraped.items():
        for name in [*NON_ZERO[service], *NON_ZERO_EVERYWHERE]:
            assert name in samples and total(samples, name) > 0, (service, name)
        for name in [*PRESENT[service], *PRESENT_EVERYWHERE]:
            assert name in samples, (service, name)
        others = [f"pirm_{other}_" for other in SERVICES if other != service]
        assert not [n for n in samples if n.startswith(tuple(others))], service  # own only

    inference, metrics, scorer = (scraped[s] for s in SERVICES)
    # Every patch once through each stage of the pipeline, counted alike by the three services.
    assert total(scorer, "pirm_scorer_images_evaluated_total", track="B") == PATCHES
    assert total(inference, "pirm_inference_images_total", device="cpu") == PATCHES
    assert total(metrics, "pirm_metrics_pairs_total") == PATCHES
    assert total(metrics, "pirm_metrics_pixels_total") == PATCHES * 100 * 100
    assert total(metrics, "pirm_metrics_compute_seconds_count", metric="msssim_numpy") == PATCHES
    for stage in ("prepare", "inference", "metrics"):
        assert total(scorer, "pirm_scorer_stage_duration_seconds_count", track="B",
                     stage=stage) == PATCHES
    for stage in ("load_model", "timing"):
        assert total(scorer, "pirm_scorer_stage_duration_seconds_count", track="B",
                     stage=stage) == 1
    assert total(scorer, "pirm_scorer_jobs_finished_total", track="B", state="SUCCEEDED") == 1
    assert total(scorer, "pirm_scorer_queue_depth") == 0
    refused = total(scorer, "grpc_server_handled_total", grpc_method="SubmitJob",
                    grpc_code="INVALID_ARGUMENT")
    assert refused == 1


def dashboard_queries() -> dict[str, list[str]]:
    """Each panel's PromQL with Grafana's variables put in, by panel title."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = {}
    for panel in panels:
        exprs = [target["expr"] for target in panel.get("targets", [])]
        for variable, value in GRAFANA_VARIABLES.items():
            exprs = [expr.replace(variable, value) for expr in exprs]
        if exprs:
            queries[panel["title"]] = exprs
    return queries


def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.5)


def test_prometheus_shows_the_job_in_the_dashboard_queries(
    prometheus: Prometheus | None, finished_job: scorer_pb2.Job
) -> None:
    if prometheus is None:
        pytest.skip("no `prometheus` binary on PATH: `make test-tools` installs Debian's package "
                    "(apt-get install prometheus)")
    queries = dashboard_queries()
    (throughput,) = queries["Throughput (images/s)"]
    (evaluated,) = queries["Images evaluated"]

    def images_counted() -> bool:
        counted = prometheus.query(evaluated)
        return bool(counted) and float(counted[0]["value"][1]) >= PATCHES

    def duration_p50() -> float:  # NaN until a scrape after the job's end
        values = [float(r["value"][1]) for r in prometheus.query(
            queries["Job duration (p50, p95)"][0]) if r["metric"]["track"] == "B"]
        return values[0] if len(values) == 1 else math.nan

    eventually(images_counted, 30, f"the dashboard's {evaluated!r} did not reach {PATCHES}")
    eventually(lambda: math.isfinite(duration_p50()), 30, "the job's duration did not show")
    assert duration_p50() > 0
    # increase() extrapolates a little past the samples, never down, and counts one scorer.
    assert float(prometheus.query(evaluated)[0]["value"][1]) < 2 * PATCHES
    rates = {r["metric"]["track"]: float(r["value"][1]) for r in prometheus.query(throughput)}
    assert rates["B"] > 0 and rates["A"] == 0

    def empty_panels() -> list[str]:
        return [f"{title}: {expr}" for title, exprs in queries.items() for expr in exprs
                if not prometheus.query(expr)]

    # Every panel has data after one job and one refused submission.
    deadline = time.monotonic() + 30
    while (empty := empty_panels()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not empty, f"panels without data: {empty}"
