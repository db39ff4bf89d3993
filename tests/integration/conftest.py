"""The integration tests' cluster lives in tests/cluster.py (shared with tests/security); its
names are kept importable from here.

`finished_job`: the README's Python client example, run as it is written against the test
cluster (from a folder holding the files it names); the job it makes is what the tests of
results (report, --json output) read, so the example costs no extra evaluation."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.core.track import Track
from tests.cluster import TEST_TIMING, Cluster, sample_dataset, start_scorer
from tests.conftest import REPO
from tests.integration.helpers import graph_bytes

__all__ = ["TEST_TIMING", "Cluster", "start_scorer"]


@dataclass(frozen=True)
class FinishedJob:
    job_id: str
    team: str
    request_id: str
    dataset: Path
    model: Path
    printed: list[str]  # what the README example printed


def brighten(tf: Any, x: Any) -> None:
    """A cheap model whose output is a known affine map of its input: 0.9 x + 0.08."""
    tf.identity(x * 0.9 + 0.08, name="output")


def readme_example() -> str:
    section = (REPO / "README.md").read_text().split("### Python client", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md has no Python block under '### Python client'"
    return match.group(1)


@pytest.fixture(scope="session")
def finished_job(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> FinishedJob:
    folder = tmp_path_factory.mktemp("readme")
    dataset = sample_dataset(folder / "pirm2018", Track.B, patches_per_photo=2)
    model = folder / "my_model.pb"
    model.write_bytes(graph_bytes(brighten))
    namespace: dict[str, Any] = {}
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(folder)
        patch.setenv("PIRM_SCORER_TARGET", cluster.target(cluster.scorer))
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    job = namespace["job"]
    assert job.error == "" and job.result.images == 8, job
    return FinishedJob(job.job_id, job.team, job.request_id, dataset, model,
                       printed.getvalue().splitlines())
