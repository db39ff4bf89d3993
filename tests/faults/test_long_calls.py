"""Long work against short-lived connections: a job's watch and the scorer's timing call outlive
several connection ages (servers ask clients to reconnect every second here, as they do every
5 minutes by default), a submission is accepted while another job's timing holds the inference
worker, and a timing that is lost mid-call is started again only a bounded number of times."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pirm.v1 import scorer_pb2
from prometheus_client import REGISTRY

from services.cli.main import main
from services.client import ScorerClient
from services.common.server import ConnectionAge, RunningServer
from services.core.timing import TimingOptions
from services.core.track import Track
from services.inference.server import create_server as create_inference
from services.metrics.server import create_server as create_metrics
from services.scorer.samples import make_sample_dataset
from services.scorer.server import ScorerConfig
from services.scorer.server import create_server as create_scorer
from tests.integration.conftest import brighten
from tests.integration.helpers import graph_bytes, wait_for
from tests.official import track_b_figures

AGE = ConnectionAge(age_s=1.0)  # calls in flight on an aged connection go on until they end
# The scorer also cuts what is in flight 0.5 s after: its watches must reconnect.
SCORER_AGE = ConnectionAge(age_s=1.0, grace_s=0.5)
# Five pairs of runs with the SRCNN-shaped baseline (1-3 s per HD run): the timing call lasts
# many connection ages.
LONG_TIMING = TimingOptions(warmup_runs=1, min_runs=4, min_seconds=0.0, max_runs=4)


@dataclass
class ShortLived:
    inference: RunningServer
    metrics: RunningServer
    scorer: RunningServer
    dataset: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.scorer.port}"


def start(tmp: Path, inference_age: ConnectionAge, timing: TimingOptions) -> ShortLived:
    inference = create_inference("127.0.0.1:0", connections=inference_age)
    metrics = create_metrics("127.0.0.1:0", connections=AGE)
    config = ScorerConfig(inference=f"127.0.0.1:{inference.port}",
                          metrics=f"127.0.0.1:{metrics.port}", store=tmp / "scorer.db",
                          state_dir=tmp, timing=timing, connections=SCORER_AGE)
    scorer = create_scorer("127.0.0.1:0", config)
    dataset = make_sample_dataset(tmp / "data", Track.B, patches_per_photo=2)
    return ShortLived(inference, metrics, scorer, dataset)


def stop(cluster: ShortLived) -> None:
    for running in (cluster.scorer, cluster.metrics, cluster.inference):
        running.stop(grace=1.0)


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShortLived]:
    cluster = start(tmp_path_factory.mktemp("short-lived"), AGE, LONG_TIMING)
    yield cluster
    stop(cluster)


def watches_started() -> float:
    return REGISTRY.get_sample_value("grpc_server_started_total", {
        "grpc_type": "server_stream", "grpc_service": "pirm.v1.ScorerService",
        "grpc_method": "WatchJob"}) or 0.0


def pirm(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out = capsys.readouterr()
    assert exit_.value.code == 0, out.out + out.err
    return out.out, out.err


def test_submit_wait_outlives_connection_ages(short_lived: ShortLived, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "brighten.pb"
    model.write_bytes(graph_bytes(brighten))
    common = ("--track", "B", "--model", str(model), "--data", str(short_lived.dataset),
              "--scorer", short_lived.target, "--wait")
    before = watches_started()
    out, progress = pirm(capsys, "submit", *common, "--team", "plain")
    lines = [line for line in progress.splitlines() if line.startswith("job ")]
    # Each state change once, the final one included, although the watch was cut.
    assert len(lines) == len(set(lines)) and lines[-1].endswith("SUCCEEDED (8/8 images)"), lines
    assert any(" RUNNING timing " in line for line in lines), lines
    assert watches_started() - before >= 2, "the watch was never cut: the test proves nothing"

    out, _ = pirm(capsys, "submit", *common, "--team", "json", "--json")
    summary = json.loads(out)
    assert summary["state"] == "SUCCEEDED", summary
    names = sorted(p.name for p in (short_lived.dataset / "patches" / "iphone").iterdir())
    official = track_b_figures(model, names, short_lived.dataset / "patches")
    assert abs(summary["psnr"] - sum(f.psnr for f in official) / len(official)) < 1e-4
    assert abs(summary["msssim"] - sum(f.msssim for f in official) / len(official)) < 1e-6
    # The timing call lasted several connection ages of the inference server.
    assert summary["stage_seconds"]["timing_wall"] > 4 * AGE.age_s
    assert summary["baseline_runtime_ms"] * summary["runtime_ci95_ms"][0] > 0


def test_submission_is_accepted_while_a_timing_holds_the_worker(
        short_lived: ShortLived, tmp_path: Path) -> None:
    with ScorerClient(short_lived.target) as client:
        first = client.submit("B", graph_bytes(brighten), short_lived.dataset, team="timed")
        wait_for(lambda: client.get(first.job_id).progress.stage == "timing",
                 "the first job's timing")

        def other(tf: Any, x: Any) -> None:
            tf.identity(x * 0.8 + 0.1, name="output")

        second = client.submit("B", graph_bytes(other), short_lived.dataset, team="vetted")
        # Accepted (vetted) while the first job was still being timed, not after.
        still = client.get(first.job_id)
        assert still.progress.stage == "timing", still
        assert second.state == scorer_pb2.JOB_STATE_QUEUED, second
        assert client.wait(second.job_id).state == scorer_pb2.JOB_STATE_SUCCEEDED
        assert client.get(first.job_id).state == scorer_pb2.JOB_STATE_SUCCEEDED


def test_a_timing_lost_twice_fails_its_job_with_the_reason(tmp_path: Path) -> None:
    """An inference server that cuts calls 0.5 s after its connection ages (as the servers did
    before: 60 s after 5 minutes) loses every long timing: the scorer starts it twice, then
    fails the job saying why, instead of starting it again until the job's time limit."""
    cluster = start(tmp_path, ConnectionAge(age_s=1.0, grace_s=0.5), LONG_TIMING)
    try:
        with ScorerClient(cluster.target) as client:
            job = client.submit("B", graph_bytes(brighten), cluster.dataset, team="cut")
            final = client.wait(job.job_id, timeout_s=600)
        assert final.state == scorer_pb2.JOB_STATE_FAILED, final
        assert "the timing was lost 2 times after it had started" in final.error, final.error
        assert "127.0.0.1" not in final.error  # the job's team never sees internal addresses
    finally:
        stop(cluster)
