"""The scorer's endpoint pool says when it stops using an endpoint, and why, and when it uses it
again: once per change, on loopback here."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from services.cli.cluster import free_port
from services.metrics.quality import QualityOptions
from services.metrics.server import create_server as create_metrics
from services.scorer.clients import DOWN_FOR_S, MetricsPool
from tests.integration.helpers import wait_for


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
    assert endpoint in said[0].reason  # type: ignore[attr-defined]
