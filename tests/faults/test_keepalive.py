"""Our channels ping their servers every 10 s, so that a peer cut off is noticed in seconds
(tests/faults/test_hosts.py); the pings must not cut the long calls themselves."""

from __future__ import annotations

import time

import numpy as np

from services.core.timing import TimingOptions
from services.inference.engine import EngineSettings
from services.inference.server import create_server as create_inference
from services.scorer.clients import InferenceClient
from tests.integration.helpers import slow_graph

SILENT_S = 45.0


def test_a_call_silent_through_several_pings_is_not_cut() -> None:
    """A timing sends nothing until its answer. A server that did not accept our pings that
    often would close the connection at the fourth (gRPC's default: GOAWAY "too_many_pings"),
    about 40 s into such a call; a 45 s timing comes back. One attempt: no retry hides a cut.
    (One thread and runs of a tenth of a second or more: 45 s of one core, little overhead.)"""
    running = create_inference("127.0.0.1:0", EngineSettings(intra_op_threads=1))
    client = InferenceClient(f"127.0.0.1:{running.port}", 64, attempts=1)
    try:
        client.load_model("slow", slow_graph(), "", "input:0", "output:0")
        started = time.monotonic()
        timing = client.benchmark("slow", np.zeros((64, 64, 3), np.float32), TimingOptions(
            warmup_runs=1, min_runs=1, min_seconds=SILENT_S, max_runs=10**6))
        assert time.monotonic() - started >= SILENT_S
        assert timing.timing.runs > 1
    finally:
        client.close()
        running.stop(None)
