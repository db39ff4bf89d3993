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

import numpy as np
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
class TimingProbe:
    """The model timed on an input the timer never sees, and what that predicts for the
    timing input (integrity.py)."""

    name: str
    shape: tuple[int, ...]
    median_ms: float
    expected_ms: float  # the timing input's cost this probe predicts


@dataclass(frozen=True)
class TimingCheck:
    """Whether the model treats the timing input as special (integrity.py)."""

    checked: bool = False
    failure: str = ""  # empty: nothing suggests the model recognises the timing input
    timed_ms: float = 0.0  # the timing input's median the probes were compared with
    probes: tuple[TimingProbe, ...] = ()
    # PSNR between the outputs on the timing input and on the same pixels shifted (interior).
    consistency_db: float = 0.0

    @property
    def passed(self) -> bool:
        return self.checked and not self.failure


@dataclass(frozen=True)
class DeviceTiming:
    """A Timing with where and how it was measured."""

    timing: Timing
    device: str
    intra_op_threads: int
    inter_op_threads: int
    node: str
    input_shape: tuple[int, ...]
    peak_memory_mb: float = 0.0  # 0: not measured
    check: TimingCheck = TimingCheck()  # of a submission's timing; unchecked for baselines


@dataclass(frozen=True)
class Comparison:
    """A solution and the baseline timed in alternation, and the speed ratio baseline/solution
    (the score's speed term before its cap) with a bootstrap 95% interval."""

    solution: Timing
    baseline: Timing
    speed_ratio: float
    ratio_ci95_low: float
    ratio_ci95_high: float
    check: TimingCheck = TimingCheck()  # of the solution's timing


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


@dataclass(frozen=True)
class RuntimeComparison:
    """A Comparison with where and how each side was measured."""

    solution: DeviceTiming
    baseline: DeviceTiming
    speed_ratio: float
    ratio_ci95_low: float
    ratio_ci95_high: float


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
