"""Runtime statistics of repeated runs: warm-up, then timed runs until enough evidence.

The challenge timed 2 runs with a millisecond clock; here every run is timed with
perf_counter_ns, runs continue until both a minimum count and a minimum total time are reached,
and the median is reported with a distribution-free 95% confidence interval.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from scipy.stats import binom

from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class TimingOptions:
    warmup_runs: int = 3
    min_runs: int = 10
    min_seconds: float = 2.0
    max_runs: int = 200

    def validated(self) -> TimingOptions:
        if not (self.warmup_runs >= 0 and self.min_runs >= 1
                and math.isfinite(self.min_seconds) and self.min_seconds >= 0):
            raise InvalidArgument(
                "timing needs warmup_runs >= 0, min_runs >= 1 and a finite min_seconds >= 0; "
                f"got {self}"
            )
        if self.max_runs < self.min_runs:
            raise InvalidArgument(
                f"timing max_runs ({self.max_runs}) is below min_runs ({self.min_runs})"
            )
        return self


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    stdev_ms: float
    runs: int
    ci95_low_ms: float
    ci95_high_ms: float
    warmup_runs: int


@dataclass(frozen=True)
class DeviceTiming:
    """A Timing with where and how it was measured."""

    timing: Timing
    device: str
    intra_op_threads: int
    inter_op_threads: int
    node: str
    input_shape: tuple[int, ...]


def measure(run_once: Callable[[], object], options: TimingOptions) -> Timing:
    """Warms up, then times `run_once` until min_runs and min_seconds are both reached."""
    options = options.validated()
    for _ in range(options.warmup_runs):
        run_once()
    samples_ns: list[int] = []
    total_ns = 0
    min_ns = int(options.min_seconds * 1e9)
    while len(samples_ns) < options.max_runs and (
        len(samples_ns) < options.min_runs or total_ns < min_ns
    ):
        start = time.perf_counter_ns()
        run_once()
        elapsed = time.perf_counter_ns() - start
        samples_ns.append(elapsed)
        total_ns += elapsed
    return summarize(samples_ns, options.warmup_runs)


def summarize(samples_ns: list[int], warmup_runs: int = 0) -> Timing:
    if not samples_ns:
        raise InvalidArgument("no timed runs to summarise")
    ms = sorted(s / 1e6 for s in samples_ns)
    low, high = median_ci95(ms)
    return Timing(
        median_ms=statistics.median(ms),
        p90_ms=percentile(ms, 90.0),
        min_ms=ms[0],
        max_ms=ms[-1],
        mean_ms=statistics.fmean(ms),
        stdev_ms=statistics.stdev(ms) if len(ms) > 1 else 0.0,
        runs=len(ms),
        ci95_low_ms=low,
        ci95_high_ms=high,
        warmup_runs=warmup_runs,
    )


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    position = (len(sorted_values) - 1) * q / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    fraction = position - lower
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * fraction


def median_ci95(sorted_values: list[float]) -> tuple[float, float]:
    """Order-statistic interval [x_(l), x_(n-l+1)] that covers the median with >= 95%.

    The number of samples below the median is Binomial(n, 1/2); l is the largest rank with
    P(B <= l - 1) < 2.5%. Below 6 samples no such rank exists and [min, max] is returned.
    """
    n = len(sorted_values)
    rank = int(binom.ppf(0.025, n, 0.5))
    if rank < 1:
        return sorted_values[0], sorted_values[-1]
    return sorted_values[rank - 1], sorted_values[n - rank]
