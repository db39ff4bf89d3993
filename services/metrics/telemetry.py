"""The metrics service's Prometheus metrics: pairs measured, the time of each figure, pixels.

Recorded by quality.evaluate_pair, which every request path (single pair, batch, stream) goes
through; batch pairs are measured on threads of this one process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram

# The figures a pair can get; MS-SSIM and SSIM in their two definitions (SPEC.md section 2).
FIGURES = ("psnr", "msssim_tf", "msssim_numpy", "ssim_tf", "ssim_numpy")

# This service's metrics, exported by its process only: the scorer imports quality.py too.
REGISTRY = CollectorRegistry(auto_describe=True)

PAIRS_MEASURED = Counter(
    "pirm_metrics_pairs", "Image pairs measured (output against target).", registry=REGISTRY,
)
PIXELS_MEASURED = Counter(
    "pirm_metrics_pixels", "Pixels of the measured pairs (height x width, after the border crop).",
    registry=REGISTRY,
)
COMPUTE_SECONDS = Histogram(
    "pirm_metrics_compute_seconds", "Time to compute one figure of one pair.", ["metric"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
             1, 2.5, 5),
    registry=REGISTRY,
)
for _figure in FIGURES:
    COMPUTE_SECONDS.labels(_figure)


@contextlib.contextmanager
def computing(metric: str) -> Iterator[None]:
    """Times the computation of one figure (`metric` is one of FIGURES)."""
    start = time.perf_counter()
    yield
    COMPUTE_SECONDS.labels(metric).observe(time.perf_counter() - start)


def pair_measured(pixels: int) -> None:
    PAIRS_MEASURED.inc()
    PIXELS_MEASURED.inc(pixels)
