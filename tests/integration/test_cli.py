"""The `pirm` command line as users run it: subprocesses of the installed console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.cluster import free_port, wait_serving
from tests.integration.helpers import is_serving
from tests.reference import msssim_numpy_ref, msssim_tf_ref, psnr_ref

PIRM = str(Path(sys.executable).parent / "pirm")


def pirm(*args: str, check: bool = True, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    # A bound against a hang, not a speed check: `pirm bench` starts TensorFlow in-process, which
    # takes minutes on a loaded 2-core machine.
    return subprocess.run([PIRM, *args], capture_output=True, text=True, timeout=600,
                          check=check, env=env)


def test_score_formula_track_b_validation_and_final() -> None:
    out = json.loads(pirm("score", "--track", "B", "--psnr", "22.5", "--msssim", "0.92",
                          "--runtime-ms", "800", "--baseline-runtime-ms", "3274", "--json").stdout)
    speed = min(4, 3274 / 800)
    assert out["score_a"] == pytest.approx(4 * 1.5 + 100 * 0.02 + 2 * speed)
    assert out["score_b"] == pytest.approx(1 * 1.5 + 400 * 0.02 + 2 * speed)
    assert out["score_c"] == pytest.approx(2 * 1.5 + 200 * 0.02 + 2.9 * speed)
    final = json.loads(pirm("score", "--track", "B", "--psnr", "21", "--mos", "2.5",
                            "--runtime-ms", "100", "--baseline-runtime-ms", "3274",
                            "--json").stdout)
    assert final["score_b"] == pytest.approx(400 * 0.0719 * (2.5 - 2.295) + 2 * 4)


def test_score_track_a_final_needs_mos_ref() -> None:
    failed = pirm("score", "--track", "A", "--psnr", "27", "--mos", "3", "--runtime-ms", "1",
                  "--baseline-runtime-ms", "2", check=False)
    assert failed.returncode != 0 and "mos_ref" in failed.stderr
    out = json.loads(pirm("score", "--track", "A", "--psnr", "27", "--mos", "3",
                          "--mos-ref", "2.5", "--kappa", "0.1", "--runtime-ms", "2000",
                          "--baseline-runtime-ms", "3239", "--json").stdout)
    assert out["score_a"] == pytest.approx(4 * 0.5 + 100 * 0.1 * 0.5 + 1 * 3239 / 2000)


def test_metrics_of_one_pair(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, (240, 256, 3), dtype=np.uint8)
    output = np.clip(target / 255.0 + rng.normal(0, 0.05, target.shape), -0.1, 1.1)
    Image.fromarray(target).save(tmp_path / "target.png")
    np.save(tmp_path / "output.npy", output.astype(np.float32))
    a = json.loads(pirm("metrics", "--track", "A", str(tmp_path / "output.npy"),
                        str(tmp_path / "target.png"), "--json").stdout)
    out = np.clip(output.astype(np.float32)[16:-16, 16:-16], 0, 1)
    ref = target[16:-16, 16:-16].astype(np.float32) / np.float32(255)
    assert abs(a["psnr"] - psnr_ref(out, ref)) < 1e-4
    assert abs(a["msssim"] - msssim_tf_ref(out, ref)) < 1e-6
    b = json.loads(pirm("metrics", "--track", "B", str(tmp_path / "output.npy"),
                        str(tmp_path / "target.png"), "--json").stdout)
    t = target.astype(np.float32) / np.float32(255)
    assert abs(b["psnr"] - psnr_ref(np.clip(output.astype(np.float32), 0, 1), t)) < 1e-4
    expected = msssim_numpy_ref(output.astype(np.float32).astype(np.float64) * 255,
                                t.astype(np.float64) * 255)
    assert abs(b["msssim"] - expected) < 1e-6


def test_pirm_up_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import grpc

    ports = {s: free_port() for s in ("inference", "metrics", "scorer")}
    metrics_ports = {s: free_port() for s in ports}
    env = dict(os.environ, PIRM_STORE=str(tmp_path / "scorer.db"),
               PIRM_STATE_DIR=str(tmp_path),
               **{f"PIRM_{s.upper()}_PORT": str(p) for s, p in ports.items()},
               **{f"PIRM_{s.upper()}_METRICS_PORT": str(p) for s, p in metrics_ports.items()})
    up = subprocess.Popen([PIRM, "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    try:
        for port in ports.values():
            wait_serving(f"127.0.0.1:{port}", timeout_s=120)
        with grpc.insecure_channel(f"127.0.0.1:{ports['scorer']}") as channel:
            assert is_serving(channel)
        # `pirm up` made tokens in the state folder; pirm commands there find its organiser
        # token by themselves, and without it the scorer refuses them.
        assert up.stdout is not None
        assert "tokens in" in up.stdout.readline() + up.stdout.readline()
        jobs = pirm("jobs", "--json", "--scorer", f"127.0.0.1:{ports['scorer']}", env=env)
        assert json.loads(jobs.stdout) == []
        refused = pirm("jobs", "--scorer", f"127.0.0.1:{ports['scorer']}", check=False,
                       env=dict(env, PIRM_STATE_DIR=str(tmp_path / "elsewhere")))
        assert refused.returncode == 2 and "UNAUTHENTICATED" in refused.stderr
        moved = dict(env, PIRM_STATE_DIR=str(tmp_path / "elsewhere"),
                     PIRM_TOKENS_FILE=str(tmp_path / "tokens"))  # as `pirm up` honours it
        assert pirm("jobs", "--scorer", f"127.0.0.1:{ports['scorer']}", env=moved).returncode == 0
        for port in metrics_ports.values():  # each service serves its Prometheus metrics
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
                assert "grpc_server_handled_total{" in page.read().decode()
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
    time.sleep(0.5)
    for port in [*ports.values(), *metrics_ports.values()]:  # every port is free again
        import socket

        with socket.socket() as sock:
            # Still refused while anything listens; allowed over the TIME_WAIT that a closed
            # HTTP connection to a /metrics port leaves.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_bench_in_process(tmp_path: Path) -> None:
    from tests.integration.helpers import graph_bytes

    model = tmp_path / "relu.pb"
    model.write_bytes(graph_bytes(lambda tf, x: tf.identity(tf.nn.relu(x), name="output")))
    image = tmp_path / "hd.png"
    Image.fromarray(np.zeros((72, 128, 3), np.uint8)).save(image)
    fast = ("--warmup-runs", "1", "--min-runs", "6", "--min-seconds", "0")
    result = json.loads(pirm("bench", "--model", str(model), "--image", str(image), *fast,
                             "--json").stdout)
    assert result["runs"] >= 6 and result["input_shape"] == [1, 72, 128, 3]
    low, high = result["ci95_ms"]
    assert result["min_ms"] <= low <= result["median_ms"] <= high <= result["max_ms"]
    assert result["p90_ms"] >= result["median_ms"] and result["peak_memory_mb"] > 0
    official = json.loads(pirm("bench", "--model", str(model), "--image", str(image),
                               "--protocol", "pirm2018", "--json").stdout)
    assert official["protocol"] == "pirm2018" and official["runs"] == 2
