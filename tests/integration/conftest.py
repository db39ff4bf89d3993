"""The integration tests' cluster lives in tests/cluster.py (shared with tests/security); its
names are kept importable from here. `finished_job`: one cheap track-B job that the tests of
results (report, --json output) read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from services.client import ScorerClient
from services.scorer.samples import make_sample_dataset
from services.scorer.scoring import Track
from tests.cluster import TEST_TIMING, Cluster, start_scorer
from tests.integration.helpers import graph_bytes

__all__ = ["TEST_TIMING", "Cluster", "start_scorer"]


@dataclass(frozen=True)
class FinishedJob:
    job_id: str
    team: str
    request_id: str
    dataset: Path
    model: Path


def brighten(tf: object, x: object) -> None:
    """A cheap model whose output is a known affine map of its input: 0.9 x + 0.08."""
    tf.identity(x * 0.9 + 0.08, name="output")  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def finished_job(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> FinishedJob:
    folder = tmp_path_factory.mktemp("finished-job")
    dataset = make_sample_dataset(folder, Track.B, patches_per_photo=2)
    model = folder / "brighten.pb"
    model.write_bytes(graph_bytes(brighten))
    with ScorerClient(cluster.target(cluster.scorer)) as client:
        job = client.submit("B", model, dataset, team="report-team", request_id="finished-1")
        job = client.wait(job.job_id, timeout_s=300)
    assert job.error == "" and job.result.images == 8, job
    return FinishedJob(job.job_id, "report-team", "finished-1", dataset, model)
