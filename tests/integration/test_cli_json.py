"""`--json` on the commands that print results: one JSON document on stdout with the fields
scripts read, progress as plain lines on stderr (not a terminal here). The commands run
in-process (`main`), as the console script calls it, to spare an interpreter start each; the
fast commands' imports are checked in processes of their own (a fresh interpreter's modules)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.cli.main import main
from services.client import ScorerClient
from tests.cluster import Cluster
from tests.integration.conftest import FinishedJob

JOB_FIELDS = {"job_id", "state", "track", "phase", "team", "model_name", "images_done",
              "images_total", "psnr", "msssim", "runtime_ms", "runtime_ci95_ms",
              "baseline_runtime_ms", "speed_ratio", "peak_memory_mb", "device", "score_a",
              "score_b", "score_c", "awaiting_mos", "stage_seconds"}
ROW_FIELDS = {"rank", "team", "model_name", "job_id", "psnr", "msssim", "mos", "runtime_ms",
              "baseline_runtime_ms", "device", "peak_memory_mb", "score_a", "score_b",
              "score_c"}


def pirm_json(capsys: pytest.CaptureFixture[str], cluster: Cluster, *args: str
              ) -> tuple[Any, str]:
    """(the parsed stdout, stderr) of `pirm ARGS --json`, which must exit with 0."""
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--json", "--scorer", cluster.target(cluster.scorer)])
    out = capsys.readouterr()
    assert exit_.value.code == 0, out.err
    return json.loads(out.out), out.err


def test_job_commands(cluster: Cluster, finished_job: FinishedJob,
                     capsys: pytest.CaptureFixture[str]) -> None:
    with ScorerClient(cluster.target(cluster.scorer)) as client:
        job = client.status(finished_job.job_id)
    status, _ = pirm_json(capsys, cluster, "status", finished_job.job_id)
    assert set(status) >= JOB_FIELDS and status["state"] == "SUCCEEDED"
    assert math.isclose(status["psnr"], job.result.psnr) and status["images_done"] == 8
    cancelled, _ = pirm_json(capsys, cluster, "cancel", finished_job.job_id)  # finished: unchanged
    assert cancelled["state"] == "SUCCEEDED" and set(cancelled) >= JOB_FIELDS
    jobs, _ = pirm_json(capsys, cluster, "jobs", "--team", finished_job.team)
    assert [j["job_id"] for j in jobs] == [finished_job.job_id]


def test_submit_wait_shows_plain_progress_and_prints_json(
        cluster: Cluster, finished_job: FinishedJob, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same request id: the job already evaluated comes back, and --wait follows it.
    submitted, progress = pirm_json(
        capsys, cluster, "submit", "--track", "B", "--model", str(finished_job.model), "--data",
        str(finished_job.dataset), "--team", finished_job.team, "--request-id",
        finished_job.request_id, "--wait")
    assert submitted["job_id"] == finished_job.job_id and set(submitted) >= JOB_FIELDS
    assert f"job {finished_job.job_id}: SUCCEEDED (8/8 images)" in progress.splitlines()
    assert "\r" not in progress and "\x1b" not in progress  # no bar drawn into a pipe


def test_leaderboard(cluster: Cluster, finished_job: FinishedJob,
                     capsys: pytest.CaptureFixture[str]) -> None:
    rows, _ = pirm_json(capsys, cluster, "leaderboard", "--track", "B")
    ours = [r for r in rows if r["team"] == finished_job.team]
    assert len(ours) == 1 and set(ours[0]) >= ROW_FIELDS
    assert ours[0]["job_id"] == finished_job.job_id
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))


# What `pirm status`, `jobs` and `leaderboard` must not pay for at each start (issue 16: 3 s of
# imports before their call, where grpc and the protos alone take 0.2 s).
HEAVY = {"numpy", "scipy", "numba", "tensorflow", "PIL", "matplotlib", "kubernetes",
         "prometheus_client", "rich"}


def test_the_fast_commands_import_no_heavy_package(cluster: Cluster,
                                                   finished_job: FinishedJob) -> None:
    """Whole processes of the console script, with Python's import log (-X importtime): each
    command answers, and none of the heavy packages was imported on its way."""
    pirm = str(Path(sys.executable).parent / "pirm")
    target = cluster.target(cluster.scorer)
    for args, shown in ((["status", finished_job.job_id], finished_job.job_id),
                        (["jobs"], finished_job.job_id),
                        (["leaderboard", "--track", "B"], finished_job.team)):
        done = subprocess.run([pirm, *args, "--scorer", target], capture_output=True,
                              text=True, timeout=120,
                              env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"))
        assert done.returncode == 0, done.stderr[-2000:]
        assert shown in done.stdout, done.stdout
        imported = {line.split("|")[-1].strip().split(".")[0]
                    for line in done.stderr.splitlines() if line.startswith("import time:")}
        assert {"grpc", "services", "pirm"} <= imported  # the log was read
        assert not imported & HEAVY, (args, sorted(imported & HEAVY))
