"""Several hosts, one lost: the scorer against two inference and two metrics endpoints, each on
a host of its own (a network namespace joined to this one by a veth pair), while one host is
cut off (its link down: its packets are dropped, nothing answers nor refuses) and another's
service is killed. Needs root (network namespaces); skipped, saying why, where they cannot be
made. The scorer, in this namespace, and the services are real processes. Last, on loopback:
an endpoint that comes back is used again, and the scorer says so."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pirm.v1 import scorer_pb2

from services.client import ScorerClient
from services.common.auth import Role, token_of, write_tokens_file
from services.common.cluster import free_port, wait_serving
from services.common.supervision import SUPERVISOR_PID
from services.core.quality import QualityOptions
from services.core.track import Track
from services.metrics.server import create_server as create_metrics
from services.scorer.clients import DOWN_FOR_S, MetricsPool
from tests.cluster import TEST_TIMING, sample_dataset
from tests.integration.helpers import graph_bytes, scrape, total, wait_for
from tests.official import track_b_figures

PORTS = {"inference": 50051, "metrics": 50052}  # each host has its own ports
WAIT_S = 600.0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    """A machine of its own: a network namespace whose eth0 is one end of a veth pair, the
    other end in this namespace. Addresses are IPv6 in a random unique-local prefix (RFC 4193),
    so that test runs side by side never collide and nothing is routed off this machine."""

    netns: str
    link: str  # the veth's end in this namespace
    address: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def target(self, service: str) -> str:
        return f"[{self.address}]:{PORTS[service]}"

    def serve(self, service: str, tokens: Path, log: Path) -> subprocess.Popen[bytes]:
        """The service's process (as `pirm up` starts it) inside the host, on its address; it
        dies with this test process (PR_SET_PDEATHSIG, as under `pirm up`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIRM_")}
        env.update({SUPERVISOR_PID: str(os.getpid()), "PIRM_NODE_NAME": self.netns})
        with log.open("ab") as output:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", f"services.{service}",
                 "--host", f"[{self.address}]", "--port", str(PORTS[service]),
                 "--metrics-port", "0", "--tokens-file", str(tokens)],
                env=env, stdout=output, stderr=output)  # `ip netns exec` execs: same pid
        self.processes.append(process)
        return process

    def cut_off(self) -> None:
        """The host's link goes down: what is sent to it is dropped, no reset comes back."""
        ip("-n", self.netns, "link", "set", "eth0", "down")


def make_hosts(names: list[str]) -> list[Host]:
    tag = secrets.token_hex(3)
    prefix = 0xFD << 120 | secrets.randbits(40) << 80  # fdXX:XXXX:XXXX::/48, one /64 a host
    hosts: list[Host] = []
    try:
        for index, name in enumerate(names):
            subnet = prefix | index << 64
            host = Host(f"pirm-{tag}-{name}", f"pirm{tag}{index}", str(IPv6Address(subnet | 2)))
            ip("netns", "add", host.netns)
            hosts.append(host)
            ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0",
               "netns", host.netns)
            # nodad: usable at once, not after duplicate address detection's second or two
            ip("addr", "add", f"{IPv6Address(subnet | 1)}/64", "dev", host.link, "nodad")
            ip("link", "set", host.link, "up")
            ip("-n", host.netns, "addr", "add", f"{host.address}/64", "dev", "eth0", "nodad")
            ip("-n", host.netns, "link", "set", "eth0", "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as error:
        remove_hosts(hosts)
        pytest.skip(f"cannot make network namespaces here ({' '.join(error.cmd)}: "
                    f"{error.stderr.strip()})")
    return hosts


def remove_hosts(hosts: list[Host]) -> None:
    for host in hosts:
        for process in host.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    for host in hosts:  # a namespace's end of the veth pair takes the other end along
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)


@dataclass
class Lab:
    hosts: dict[str, Host]
    scorer_target: str
    scorer_metrics_port: int
    scorer_log: Path
    store: Path
    token: str


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Four hosts, one service each: inference on a and b, metrics on c and d; the scorer in
    this namespace, using all four."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make network namespaces with")
    roles = {"a": "inference", "b": "inference", "c": "metrics", "d": "metrics"}
    hosts = dict(zip(roles, make_hosts(list(roles)), strict=True))
    scorer: subprocess.Popen[bytes] | None = None
    try:
        tokens = tmp_path / "tokens"
        write_tokens_file(tokens, [(Role.INTERNAL, "scorer"), (Role.ORGANISER, "jury")])
        for name, service in roles.items():
            hosts[name].serve(service, tokens, tmp_path / f"{service}-{name}.log")
        port, metrics_port = free_port(), free_port()
        timing = {"WARMUP_RUNS": TEST_TIMING.warmup_runs, "MIN_RUNS": TEST_TIMING.min_runs,
                  "MIN_SECONDS": TEST_TIMING.min_seconds, "MAX_RUNS": TEST_TIMING.max_runs}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIRM_")}
        env.update({SUPERVISOR_PID: str(os.getpid()),
                    **{f"PIRM_TIMING_{k}": f"{v:g}" for k, v in timing.items()}})
        log = tmp_path / "scorer.log"
        with log.open("ab") as output:
            scorer = subprocess.Popen(
                [sys.executable, "-m", "services.scorer", "--port", str(port),
                 "--metrics-port", str(metrics_port), "--tokens-file", str(tokens),
                 "--inference", ",".join(hosts[h].target("inference") for h in "ab"),
                 "--metrics", ",".join(hosts[h].target("metrics") for h in "cd"),
                 "--store", str(tmp_path / "scorer.db"), "--state-dir", str(tmp_path)],
                env=env, stdout=output, stderr=output)
        for name, service in roles.items():
            wait_serving(hosts[name].target(service), timeout_s=300)
        wait_serving(f"127.0.0.1:{port}", timeout_s=300)
        token = token_of(tokens, Role.ORGANISER)
        assert token is not None
        yield Lab(hosts, f"127.0.0.1:{port}", metrics_port, log,
                  tmp_path / "scorer.db", token)
    finally:
        if scorer is not None:
            scorer.kill()
            scorer.wait()
        remove_hosts(list(hosts.values()))


def small_convolutions(tf: Any, x: Any) -> None:
    """Three 3x3 convolutions (3 -> 16 -> 16 -> 3 channels): milliseconds per patch, about a
    second on the HD timing image."""
    rng = np.random.default_rng(1)
    y = x
    for c_in, c_out in ((3, 16), (16, 16), (16, 3)):
        w = (rng.standard_normal((3, 3, c_in, c_out)) * 0.05).astype(np.float32)
        y = tf.nn.conv2d(y, tf.constant(w), strides=1, padding="SAME")
    tf.identity(x + 0.05 * tf.tanh(y), name="output")


def log_entries(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a service's log (other lines, e.g. TensorFlow's, left out)."""
    entries = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def test_a_host_cut_off_and_another_killed_mid_job(lab: Lab, tmp_path: Path) -> None:
    """Host a (inference) is cut off and host d's metrics service SIGKILLed while the job's
    images are being evaluated; inference on b and metrics on c are left, and the job finishes
    on them: every image's figures are the model's true ones and stored once, the scorer counts
    each image once and the job once, the timing ran on b, and the scorer's log says it stopped
    using a and d, and why."""
    dataset = sample_dataset(tmp_path, Track.B, patches_per_photo=30)
    names = sorted(p.name for p in (dataset / "patches" / "iphone").iterdir())
    model = tmp_path / "model.pb"
    model.write_bytes(graph_bytes(small_convolutions))
    cut, killed = lab.hosts["a"], lab.hosts["d"]
    with ScorerClient(lab.scorer_target, token=lab.token) as client:
        job = client.submit(Track.B, model, dataset, team="hosts")

        def images_done() -> int:
            current = client.get(job.job_id)
            assert current.state != scorer_pb2.JOB_STATE_FAILED, current.error
            return current.progress.images_done

        wait_for(lambda: images_done() >= 4, "the job's first images")
        cut.cut_off()
        cut_at = time.monotonic()
        os.kill(killed.processes[0].pid, signal.SIGKILL)
        during = client.get(job.job_id)  # both happened mid-job, with images left to do
        assert during.state == scorer_pb2.JOB_STATE_RUNNING
        assert during.progress.images_done < len(names) - 10
        final = client.wait(job.job_id, timeout_s=WAIT_S)
        finished_at = time.monotonic()
    assert final.state == scorer_pb2.JOB_STATE_SUCCEEDED, final.error
    # Had a call to the cut host waited for its deadline (inference: 600 s), the job would
    # have ended that much later; keepalive noticed the silence instead.
    assert finished_at - cut_at < 300
    assert final.result.images == len(names)
    assert final.result.runtime.node == lab.hosts["b"].netns

    # Each image stored once, with the model's true figures (computed without our services).
    with sqlite3.connect(lab.store) as db:
        stored = db.execute("SELECT image, psnr, msssim FROM image_results WHERE job_id = ? "
                            "ORDER BY image", (job.job_id,)).fetchall()
    assert sorted(image for image, _, _ in stored) == sorted(names)
    official = {f.name: f for f in track_b_figures(model, names, dataset / "patches")}
    for image, psnr, msssim in stored:
        assert abs(psnr - official[image].psnr) < 1e-4, image
        assert abs(msssim - official[image].msssim) < 1e-6, image
    assert abs(final.result.psnr - math.fsum(f.psnr for f in official.values()) / len(names)
               ) < 1e-4
    assert abs(final.result.msssim - math.fsum(f.msssim for f in official.values())
               / len(names)) < 1e-6

    # Counted once: images evaluated, and the job's one transition to SUCCEEDED.
    samples = scrape(lab.scorer_metrics_port)
    assert total(samples, "pirm_scorer_images_evaluated_total", track="B") == len(names)
    assert total(samples, "pirm_scorer_jobs_finished_total", state="SUCCEEDED") == 1
    assert total(samples, "pirm_scorer_jobs_finished_total", state="FAILED") == 0
    entries = log_entries(lab.scorer_log)
    assert [e["job_id"] for e in entries if e["msg"] == "job succeeded"] == [job.job_id]

    # The scorer said, once each, which endpoints it stopped using and why.
    out_of_use = [e for e in entries if e["msg"] == "endpoint out of use"]
    assert sorted((e["service"], e["endpoint"]) for e in out_of_use) == [
        ("inference", cut.target("inference")), ("metrics", killed.target("metrics"))]
    for entry in out_of_use:
        assert entry["level"] == "warning"
        assert entry["status"] == "UNAVAILABLE"
        # The reason in gRPC's own words (the endpoint is in its own field: a job's error, read
        # by teams, names the service only).
        assert entry["reason"].startswith(f"{entry['service']}: ") and len(entry["reason"]) > 20


def test_an_endpoint_back_is_used_again_and_each_change_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """Two metrics endpoints, one of them not started yet: the pool says once that it stopped
    using it, though it tries it again and again, and once that it uses it again when it is
    up."""
    late_port = free_port()
    live = create_metrics("127.0.0.1:0")
    late = None
    pool = MetricsPool(f"127.0.0.1:{live.port},127.0.0.1:{late_port}", 64)
    output, target = np.random.default_rng(0).random((2, 192, 192, 3), np.float32)

    def back() -> bool:
        pool.evaluate(output, target, QualityOptions())
        return any(r.getMessage() == "endpoint back in use" for r in caplog.records)

    try:
        with caplog.at_level(logging.INFO, logger="services.scorer.clients"):
            calls_until = time.monotonic() + DOWN_FOR_S + 3  # so that it is tried again
            while time.monotonic() < calls_until:
                assert not back()
            late = create_metrics(f"127.0.0.1:{late_port}")
            # Tried again once its 10 s as the last choice are over (and gRPC reconnects).
            wait_for(back, "the endpoint back in use", timeout_s=180)
            for _ in range(6):
                back()
    finally:
        pool.close()
        for running in (live, late):
            if running is not None:
                running.stop(None)
    endpoint = f"127.0.0.1:{late_port}"
    said = [r for r in caplog.records if r.getMessage().startswith("endpoint")]
    assert [(r.getMessage(), r.endpoint) for r in said] == [  # type: ignore[attr-defined]
        ("endpoint out of use", endpoint), ("endpoint back in use", endpoint)]
    assert said[0].status == "UNAVAILABLE"  # type: ignore[attr-defined]
    assert said[0].reason.startswith("metrics: ")  # type: ignore[attr-defined]
