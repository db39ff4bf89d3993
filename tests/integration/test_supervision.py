"""`pirm up`'s supervisor (LocalCluster) restarts a scorer killed with SIGKILL in the middle of
a job, and the restarted scorer finishes that job exactly once, without recomputing the images
it had already stored."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from pirm.v1 import scorer_pb2

from services.client import ScorerClient
from services.common.auth import Role
from services.common.cluster import free_port, wait_serving
from services.core.track import Track
from tests.cluster import sample_dataset, supervised_cluster
from tests.integration.helpers import inferences_of, slow_graph, wait_for

KILL_AFTER_IMAGES = 8  # stored before the kill; more than the pipeline can hold unstored
IN_FLIGHT_BOUND = 6  # inferred but not yet stored: 1 inferring + 2 queued + 2 scoring + 1 queued
WAIT_S = 600.0


def test_killed_scorer_restarts_and_finishes_its_job_once(tmp_path: Path) -> None:
    store = tmp_path / "scorer.db"
    cluster = supervised_cluster(tmp_path)
    cluster.start()
    try:
        dataset = sample_dataset(tmp_path, Track.B, patches_per_photo=4)
        total = len(list((dataset / "patches" / "iphone").iterdir()))
        assert total > KILL_AFTER_IMAGES + IN_FLIGHT_BOUND
        scorer = cluster.target("scorer")
        with ScorerClient(scorer, token=cluster.token()) as client:
            job = client.submit(Track.B, slow_graph(), dataset, team="restart",
                                request_id="once")
            def scored_enough() -> bool:
                current = client.get(job.job_id)
                assert current.state in (scorer_pb2.JOB_STATE_QUEUED,
                                         scorer_pb2.JOB_STATE_RUNNING), current
                return current.progress.images_done >= KILL_AFTER_IMAGES

            wait_for(scored_enough, f"{KILL_AFTER_IMAGES} scored images")
        os.kill(cluster.pid("scorer"), signal.SIGKILL)
        wait_for(lambda: cluster.restarts["scorer"] == 1, "the supervisor's restart")
        wait_serving(scorer)
        with ScorerClient(scorer, token=cluster.token()) as client:
            # The client's retry after the crash is the same submission, not a second job.
            again = client.submit(Track.B, slow_graph(), dataset, team="restart",
                                  request_id="once")
            assert again.job_id == job.job_id
            final = client.wait(job.job_id, timeout_s=WAIT_S)
        assert final.state == scorer_pb2.JOB_STATE_SUCCEEDED, final.error
        assert final.result.images == total
        with sqlite3.connect(store) as db:
            assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1
            assert db.execute("SELECT COUNT(*) FROM image_results WHERE job_id = ?",
                              (job.job_id,)).fetchone()[0] == total
        # Stored images were not inferred again: at most those in flight at the kill were.
        count = inferences_of(cluster.target("inference"), f"sha256-{job.model_sha256[:16]}",
                              cluster.token(Role.INTERNAL))
        assert total <= count <= total + IN_FLIGHT_BOUND, count
    finally:
        cluster.stop()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_services_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """`pirm up` killed with SIGKILL leaves no service behind: each asked the kernel at its
    start to be sent SIGTERM when its parent dies."""
    env = dict(os.environ, PIRM_STATE_DIR=str(tmp_path), PIRM_STORE=str(tmp_path / "s.db"))
    for service in ("inference", "metrics", "scorer"):
        env[f"PIRM_{service.upper()}_PORT"] = str(free_port())
        env[f"PIRM_{service.upper()}_METRICS_PORT"] = "0"
    up = subprocess.Popen([sys.executable, "-m", "services.cli.main", "up", "--insecure-dev"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for service in ("inference", "metrics", "scorer"):
            wait_serving(f"127.0.0.1:{env[f'PIRM_{service.upper()}_PORT']}", 180)
        services = _children(up.pid)
        assert len(services) == 3, services
        os.kill(up.pid, signal.SIGKILL)
        up.wait(10)
        wait_for(lambda: not any(_alive(pid) for pid in services), "the services to exit")
    finally:
        if up.poll() is None:
            up.kill()
