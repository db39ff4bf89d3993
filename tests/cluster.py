"""A real cluster for the tests: the three servers on free loopback ports (the session
fixtures below are registered for every test folder by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pirm.v1 import inference_pb2_grpc, metrics_pb2_grpc, scorer_pb2_grpc

from services.common.cluster import SERVICES, LocalCluster, free_port
from services.common.server import RunningServer
from services.core.channel import open_channel
from services.core.timing import TimingOptions
from services.core.track import Track
from services.inference.server import create_server as create_inference
from services.metrics.server import create_server as create_metrics
from services.scorer.samples import make_sample_dataset
from services.scorer.server import ScorerConfig
from services.scorer.server import create_server as create_scorer

# Enough to exercise the timing path without spending minutes on it.
TEST_TIMING = TimingOptions(warmup_runs=1, min_runs=2, min_seconds=0.0, max_runs=3)
# The timing images of the tests' generated datasets: a quarter of HD each way, so that every
# timing (model, baseline, probes) costs a sixteenth. Tests of the HD size itself keep the
# challenge's (tests/security/test_clock_gaming.py, the real-data tests).
TEST_HD = (320, 180)


def sample_dataset(root: Path, track: Track, patches_per_photo: int = 10) -> Path:
    """make_sample_dataset with TEST_HD timing images."""
    return make_sample_dataset(root, track, patches_per_photo, hd_size=TEST_HD)


@dataclass
class Cluster:
    inference: RunningServer
    metrics: RunningServer
    scorer: RunningServer
    store: Path

    def target(self, running: RunningServer) -> str:
        return f"127.0.0.1:{running.port}"

    def channel(self, running: RunningServer) -> grpc.Channel:
        return open_channel(self.target(running), 64)


def start_scorer(inference_port: int, metrics_port: int, store: Path,
                 state_dir: Path) -> RunningServer:
    config = ScorerConfig(
        inference=f"127.0.0.1:{inference_port}",
        metrics=f"127.0.0.1:{metrics_port}",
        store=store,
        state_dir=state_dir,
        timing=TEST_TIMING,
    )
    return create_scorer("127.0.0.1:0", config)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("scorer")
    inference = create_inference("127.0.0.1:0")
    metrics = create_metrics("127.0.0.1:0")
    scorer = start_scorer(inference.port, metrics.port, state / "scorer.db", state)
    yield Cluster(inference, metrics, scorer, state / "scorer.db")
    for running in (scorer, metrics, inference):
        running.stop(grace=1.0)


@pytest.fixture(scope="session")
def inference_stub(cluster: Cluster) -> inference_pb2_grpc.InferenceServiceStub:
    return inference_pb2_grpc.InferenceServiceStub(cluster.channel(cluster.inference))


@pytest.fixture(scope="session")
def metrics_stub(cluster: Cluster) -> metrics_pb2_grpc.MetricsServiceStub:
    return metrics_pb2_grpc.MetricsServiceStub(cluster.channel(cluster.metrics))


@pytest.fixture(scope="session")
def scorer_stub(cluster: Cluster) -> scorer_pb2_grpc.ScorerServiceStub:
    return scorer_pb2_grpc.ScorerServiceStub(cluster.channel(cluster.scorer))


def supervised_cluster(state: Path) -> LocalCluster:
    """`pirm up`'s three processes on free ports under its supervisor (a killed service comes
    back), with the store in `state` and TEST_TIMING's short timing; not yet started."""
    timing = {"WARMUP_RUNS": TEST_TIMING.warmup_runs, "MIN_RUNS": TEST_TIMING.min_runs,
              "MIN_SECONDS": TEST_TIMING.min_seconds, "MAX_RUNS": TEST_TIMING.max_runs}
    return LocalCluster(
        ports={service: free_port() for service in SERVICES},
        # Free /metrics ports too: two test processes may start such clusters at once.
        metrics_ports={service: free_port() for service in SERVICES},
        web_port=free_port(),
        log_dir=state / "logs",
        extra_env={"PIRM_STORE": str(state / "scorer.db"), "PIRM_STATE_DIR": str(state),
                   **{f"PIRM_TIMING_{name}": f"{value:g}" for name, value in timing.items()}},
    )
