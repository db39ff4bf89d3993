"""Runtime statistics of repeated runs: warm-up, then timed runs until enough evidence.

The challenge timed 2 runs with a millisecond clock; here every run is timed with
perf_counter_ns and the median is reported with a distribution-free 95% confidence interval.

A model and the baseline are compared sequentially (TimingOptions.protocol): after warm-up they
alternate in pairs, a block of runs of the faster side against one run of the slower (so a pair
costs about two runs of the slower side, whatever the model's speed), the pairs' order
alternating (model first, then baseline first) so that a drift of a shared machine cancels
within two pairs. Each pair gives log(baseline / model) of its blocks' medians; the ratio's 95%
interval is the sign-test interval of the median of these (distribution-free: a burst of other
work on the node widens it rather than biasing it), and the pairs stop once it is narrow
enough. The earlier fixed protocol (min_runs and min_seconds on each side) stays an option.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np
from scipy.stats import binom

from services.core.errors import InvalidArgument
from services.core.timing import (
    FIXED,
    STOP_BUDGET,
    STOP_FIXED,
    STOP_MAX_PAIRS,
    STOP_WIDTH,
    Comparison,
    Stopping,
    Timing,
    TimingOptions,
    relative_width,
)

# Warm-up goes on while the latest run is still this much faster than every run before it.
STILL_FALLING = 0.97
MAX_EXTRA_WARMUP = 20
BOOTSTRAP_RESAMPLES = 2000
# A block of the faster side lasts about one run of the slower side, up to this many runs.
MAX_BLOCK = 1000
SEQUENTIAL_TAIL = 0.0125  # each tail of the sequential interval (paired_ratio_ci95)


Timer = Callable[[Callable[[], object]], int]  # runs once, returns its nanoseconds


def _timed_ns(run_once: Callable[[], object]) -> int:
    start = time.perf_counter_ns()
    run_once()
    return time.perf_counter_ns() - start


def warm_up(run_once: Callable[[], object], minimum: int) -> int:
    """At least `minimum` runs, more while the run time is still falling; returns the count."""
    return len(_warm_up(run_once, minimum))


def _warm_up(run_once: Callable[[], object], minimum: int,
             timer: Timer = _timed_ns) -> list[int]:
    times = [timer(run_once) for _ in range(minimum)]
    while (2 <= len(times) < minimum + MAX_EXTRA_WARMUP
           and times[-1] < STILL_FALLING * min(times[:-1])):
        times.append(timer(run_once))
    return times


def _enough(samples_ns: list[int], options: TimingOptions) -> bool:
    if len(samples_ns) >= options.max_runs:
        return True
    return len(samples_ns) >= options.min_runs and sum(samples_ns) >= options.min_seconds * 1e9


def measure(run_once: Callable[[], object], options: TimingOptions) -> Timing:
    """Warms up, then times `run_once` until min_runs and min_seconds are both reached (a
    model alone: the protocol option applies to comparisons)."""
    options = options.validated()
    warmups = warm_up(run_once, options.warmup_runs)
    samples_ns: list[int] = []
    while not _enough(samples_ns, options):
        samples_ns.append(_timed_ns(run_once))
    return summarize(samples_ns, warmups)


def measure_interleaved(
    run_solution: Callable[[], object], run_baseline: Callable[[], object],
    options: TimingOptions, timer: Timer = _timed_ns,
    warmups: tuple[int, int] | None = None,
) -> Comparison:
    """Times solution and baseline in alternation so that drift of a shared machine affects
    both alike, by the options' protocol (the module's docstring). `timer`: how one run is
    timed (a simulated clock in tests); `warmups`: the least warm-up runs of each side
    (default: the options')."""
    options = options.validated()
    if options.protocol == FIXED:
        return _fixed_interleaved(run_solution, run_baseline, options)
    least_solution, least_baseline = warmups or (options.warmup_runs, options.warmup_runs)
    solution_warm = _warm_up(run_solution, least_solution, timer)
    baseline_warm = _warm_up(run_baseline, least_baseline, timer)
    a: list[int] = []
    b: list[int] = []
    logs: list[float] = []  # log(baseline / solution) of each pair's blocks
    blocks = _blocks(solution_warm, baseline_warm)
    low, high, ratio = 0.0, math.inf, math.nan
    reason = STOP_MAX_PAIRS
    while len(logs) < options.max_runs:
        # Without a warm-up to size the blocks by, the first pair (one run each) sizes them.
        size_a, size_b = blocks or (1, 1)
        if len(logs) % 2 == 0:
            block_a = [timer(run_solution) for _ in range(size_a)]
            block_b = [timer(run_baseline) for _ in range(size_b)]
        else:
            block_b = [timer(run_baseline) for _ in range(size_b)]
            block_a = [timer(run_solution) for _ in range(size_a)]
        blocks = blocks or _blocks(block_a, block_b)
        a += block_a
        b += block_b
        logs.append(math.log(_block_value(block_b) / _block_value(block_a)))
        ratio = statistics.median(b) / statistics.median(a)
        low, high = paired_ratio_ci95(logs)
        # The reported ratio (the score's, from each side's median) is always inside its
        # interval: widening it only adds coverage.
        low, high = min(low, ratio), max(high, ratio)
        if len(logs) >= options.min_pairs and relative_width(low, high) <= options.ratio_width:
            reason = STOP_WIDTH
            break
        if options.max_seconds and (sum(a) + sum(b)) / 1e9 >= options.max_seconds:
            reason = STOP_BUDGET
            break
    size_a, size_b = blocks or (1, 1)
    return Comparison(
        solution=summarize(a, len(solution_warm)),
        baseline=summarize(b, len(baseline_warm)),
        speed_ratio=ratio,
        ratio_ci95_low=low,
        ratio_ci95_high=high,
        stopping=Stopping(
            protocol=options.protocol, pairs=len(logs), solution_block=size_a,
            baseline_block=size_b, width=relative_width(low, high), reason=reason),
    )


def _block_value(block: list[int]) -> float:
    return statistics.median(block)


def _blocks(solution_ns: list[int], baseline_ns: list[int]) -> tuple[int, int] | None:
    """(runs of the model, runs of the baseline) in a pair: a block of the faster side about
    as long as one run of the slower, from the latest runs of each (None: no runs yet)."""
    if not solution_ns or not baseline_ns:
        return None
    solution = min(solution_ns[-2:])
    baseline = min(baseline_ns[-2:])
    if baseline >= solution:
        return min(MAX_BLOCK, max(1, round(baseline / max(solution, 1)))), 1
    return 1, min(MAX_BLOCK, max(1, round(solution / max(baseline, 1))))


def paired_ratio_ci95(logs: list[float]) -> tuple[float, float]:
    """95% interval of the ratio from the pairs' log ratios: the sign-test interval of their
    median (order statistics; distribution-free), exp'd, computed at 97.5%: the pairs stop as
    soon as an interval looks narrow, which favours the looks where it happens to be narrow;
    at 95% such intervals covered 92% of simulated drifting timings, at 97.5% at least 93%
    (tests/unit/test_sequential_timing.py). Below 7 pairs: (0, inf)."""
    ordered = sorted(logs)
    n = len(ordered)
    rank = int(binom.ppf(SEQUENTIAL_TAIL, n, 0.5))
    if rank < 1:
        return 0.0, math.inf
    return math.exp(ordered[rank - 1]), math.exp(ordered[n - rank])


def _fixed_interleaved(
    run_solution: Callable[[], object], run_baseline: Callable[[], object],
    options: TimingOptions,
) -> Comparison:
    """The earlier protocol: A B A B ... until each side has min_runs and min_seconds (or
    max_runs), with a bootstrap interval of the ratio."""
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
        stopping=Stopping(protocol=options.protocol, pairs=len(a),
                          width=relative_width(low, high), reason=STOP_FIXED),
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
