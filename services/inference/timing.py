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

import numpy as np
from scipy.stats import binom

from services.core.errors import InvalidArgument
from services.core.timing import Comparison, Timing, TimingOptions

# Warm-up goes on while the latest run is still this much faster than every run before it.
STILL_FALLING = 0.97
MAX_EXTRA_WARMUP = 20
BOOTSTRAP_RESAMPLES = 2000


def _timed_ns(run_once: Callable[[], object]) -> int:
    start = time.perf_counter_ns()
    run_once()
    return time.perf_counter_ns() - start


def warm_up(run_once: Callable[[], object], minimum: int) -> int:
    """At least `minimum` runs, more while the run time is still falling; returns the count."""
    times = [_timed_ns(run_once) for _ in range(minimum)]
    while (2 <= len(times) < minimum + MAX_EXTRA_WARMUP
           and times[-1] < STILL_FALLING * min(times[:-1])):
        times.append(_timed_ns(run_once))
    return len(times)


def _enough(samples_ns: list[int], options: TimingOptions) -> bool:
    if len(samples_ns) >= options.max_runs:
        return True
    return len(samples_ns) >= options.min_runs and sum(samples_ns) >= options.min_seconds * 1e9


def measure(run_once: Callable[[], object], options: TimingOptions) -> Timing:
    """Warms up, then times `run_once` until min_runs and min_seconds are both reached."""
    options = options.validated()
    warmups = warm_up(run_once, options.warmup_runs)
    samples_ns: list[int] = []
    while not _enough(samples_ns, options):
        samples_ns.append(_timed_ns(run_once))
    return summarize(samples_ns, warmups)


def measure_interleaved(
    run_solution: Callable[[], object], run_baseline: Callable[[], object],
    options: TimingOptions,
) -> Comparison:
    """Times solution and baseline as A B A B ... so that drift of a shared machine affects
    both alike; stops when each has min_runs and min_seconds (or max_runs)."""
    options = options.validated()
    warm_solution = warm_up(run_solution, options.warmup_runs)
    warm_baseline = warm_up(run_baseline, options.warmup_runs)
    a: list[int] = []
    b: list[int] = []
    while not (_enough(a, options) and _enough(b, options)):
        a.append(_timed_ns(run_solution))
        b.append(_timed_ns(run_baseline))
    low, high = ratio_ci95(a, b)
    return Comparison(
        solution=summarize(a, warm_solution),
        baseline=summarize(b, warm_baseline),
        speed_ratio=statistics.median(b) / statistics.median(a),
        ratio_ci95_low=low,
        ratio_ci95_high=high,
    )


PIRM2018_IMAGES = 4
PIRM2018_DISCARDED = 2


def measure_pirm2018(run_on: Callable[[int], object], images: int = PIRM2018_IMAGES) -> Timing:
    """The challenge's own protocol, for comparison with its published tables: one run on each
    of 4 HD images timed with a millisecond wall clock, the first 2 discarded, the mean of the
    rest reported (as median and mean alike)."""
    samples_ms = []
    for index in range(images):
        start = round(time.time() * 1000)
        run_on(index)
        samples_ms.append(round(time.time() * 1000) - start)
    kept = samples_ms[PIRM2018_DISCARDED:]
    mean = statistics.fmean(kept)
    return Timing(
        median_ms=mean, p90_ms=max(kept), min_ms=min(kept), max_ms=max(kept), mean_ms=mean,
        stdev_ms=statistics.stdev(kept) if len(kept) > 1 else 0.0, runs=len(kept),
        ci95_low_ms=min(kept), ci95_high_ms=max(kept), warmup_runs=PIRM2018_DISCARDED,
    )


def ratio_ci95(solution_ns: list[int], baseline_ns: list[int]) -> tuple[float, float]:
    """Percentile bootstrap of median(baseline) / median(solution), resampling the interleaved
    pairs together so that their shared drift stays paired."""
    a = np.asarray(solution_ns, dtype=np.float64)
    b = np.asarray(baseline_ns, dtype=np.float64)
    rng = np.random.default_rng(0)  # reproducible intervals for the same samples
    picks = rng.integers(0, len(a), size=(BOOTSTRAP_RESAMPLES, len(a)))
    ratios = np.median(b[picks], axis=1) / np.median(a[picks], axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


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
