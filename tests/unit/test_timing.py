"""services.inference.timing: summary statistics, the median's confidence interval, measure()."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import pytest
from scipy.stats import binom

from services.core.errors import InvalidArgument
from services.core.timing import FIXED, TimingOptions
from services.inference.timing import measure, median_ci95, summarize

# --------------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------------


def ci_rank_ref(n: int) -> int:
    """The largest l with P(Binomial(n, 1/2) <= l - 1) < 0.025; 0 when there is none."""
    best = 0
    for rank in range(1, n + 1):
        if binom.cdf(rank - 1, n, 0.5) < 0.025:
            best = rank
        else:
            break
    return best


def median_ci95_ref(values: list[float]) -> tuple[float, float]:
    x = sorted(values)
    n = len(x)
    rank = ci_rank_ref(n)
    if n < 6 or rank < 1:
        return x[0], x[-1]
    return x[rank - 1], x[n - rank]  # x_(l) and x_(n-l+1), 1-based


# --------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------


def test_summarize_hand_worked() -> None:
    # 1, 2, 3, 4, 10 ms, given unsorted and in nanoseconds.
    samples = [3_000_000, 10_000_000, 1_000_000, 4_000_000, 2_000_000]
    t = summarize(samples, warmup_runs=2)
    assert t.median_ms == 3.0
    # p90: position 0.9 * 4 = 3.6 -> 4 + 0.6 * (10 - 4) = 7.6
    assert t.p90_ms == pytest.approx(7.6, abs=1e-12)
    assert t.mean_ms == pytest.approx(4.0, abs=1e-12)
    # deviations -3, -2, -1, 0, 6: sum of squares 50, / (n - 1) = 12.5
    assert t.stdev_ms == pytest.approx(math.sqrt(12.5), abs=1e-12)
    assert (t.min_ms, t.max_ms) == (1.0, 10.0)
    assert t.runs == 5
    assert t.warmup_runs == 2
    assert (t.ci95_low_ms, t.ci95_high_ms) == (1.0, 10.0)  # n < 6: [min, max]


def test_summarize_even_count_median_is_midpoint() -> None:
    t = summarize([1_000_000, 2_000_000, 5_000_000, 9_000_000])
    assert t.median_ms == 3.5
    assert t.warmup_runs == 0


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 15, 16, 40, 101])
def test_summarize_matches_numpy_and_statistics(n: int) -> None:
    rng = np.random.default_rng(1000 + n)
    samples = [int(v) for v in rng.lognormal(mean=16.0, sigma=0.4, size=n)]  # ~ 9 ms
    ms = np.array(samples, dtype=np.float64) / 1e6
    t = summarize(samples)
    assert t.median_ms == pytest.approx(float(np.median(ms)), rel=1e-12)
    assert t.p90_ms == pytest.approx(float(np.percentile(ms, 90.0)), rel=1e-12)
    assert t.mean_ms == pytest.approx(float(np.mean(ms)), rel=1e-12)
    expected_stdev = statistics.stdev(ms.tolist()) if n > 1 else 0.0
    assert t.stdev_ms == pytest.approx(expected_stdev, rel=1e-9, abs=1e-12)
    if n > 1:
        assert t.stdev_ms == pytest.approx(float(np.std(ms, ddof=1)), rel=1e-9)
    assert t.min_ms == float(ms.min())
    assert t.max_ms == float(ms.max())
    assert t.runs == n
    low, high = median_ci95_ref(ms.tolist())
    assert (t.ci95_low_ms, t.ci95_high_ms) == (low, high)
    assert t.ci95_low_ms <= t.median_ms <= t.ci95_high_ms


def test_summarize_single_sample() -> None:
    t = summarize([2_500_000])
    assert t.median_ms == t.p90_ms == t.min_ms == t.max_ms == t.mean_ms == 2.5
    assert t.stdev_ms == 0.0
    assert (t.ci95_low_ms, t.ci95_high_ms) == (2.5, 2.5)


def test_summarize_without_samples_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        summarize([])


# --------------------------------------------------------------------------------------------
# median_ci95
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 6))
def test_median_ci_small_samples_are_min_max(n: int) -> None:
    values = [float(v) for v in range(10, 10 + n)]
    assert median_ci95(values) == (values[0], values[-1])


def test_ci_rank_reference_hand_worked() -> None:
    # The reference itself, on numbers worked by hand:
    # n=6: P(B<=0)=1/64<0.025, P(B<=1)=7/64 -> l=1.  n=15: P(B<=3)=576/32768=0.0176,
    # P(B<=4)=1941/32768=0.0592 -> l=4.  n=5: P(B<=0)=1/32=0.031 -> none.
    assert ci_rank_ref(5) == 0
    assert ci_rank_ref(6) == 1
    assert ci_rank_ref(15) == 4


@pytest.mark.parametrize("n", list(range(1, 41)) + [50, 64, 99, 100, 200, 500])
def test_median_ci_matches_binomial_order_statistics(n: int) -> None:
    # distinct values so that each rank is identifiable: value == 1-based rank
    values = [float(i) for i in range(1, n + 1)]
    low, high = median_ci95(values)
    rank = ci_rank_ref(n)
    if rank < 1:
        assert (low, high) == (1.0, float(n))
    else:
        assert (low, high) == (float(rank), float(n - rank + 1))
        # the exact coverage of the interval is at least 95%
        assert 1.0 - 2.0 * binom.cdf(rank - 1, n, 0.5) >= 0.95


def test_median_ci_on_random_samples() -> None:
    rng = np.random.default_rng(7)
    for n in (6, 9, 17, 33, 120):
        values = sorted(rng.exponential(5.0, size=n).tolist())
        assert median_ci95(values) == median_ci95_ref(values)


def test_median_ci_empirical_coverage() -> None:
    """2000 samples of 15 runtimes from a skewed distribution: the interval covers the true
    median at least 95% of the time (exact coverage for n=15 is 1 - 2 * 576/32768 = 0.9648)."""
    trials, n = 2000, 15
    rng = np.random.default_rng(20180901)
    mu, sigma = math.log(1200.0), 0.6
    true_median = math.exp(mu)  # median of a lognormal
    samples = np.sort(rng.lognormal(mu, sigma, size=(trials, n)), axis=1)
    covered = 0
    for row in samples:
        low, high = median_ci95(row.tolist())
        covered += low <= true_median <= high
    coverage = covered / trials
    exact = 1.0 - 2.0 * float(binom.cdf(3, n, 0.5))
    assert exact == pytest.approx(1.0 - 2.0 * 576 / 32768)
    standard_error = math.sqrt(exact * (1.0 - exact) / trials)
    assert coverage >= 0.95 - 3.0 * standard_error
    assert abs(coverage - exact) <= 4.0 * standard_error


# --------------------------------------------------------------------------------------------
# measure
# --------------------------------------------------------------------------------------------


class Sleeper:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        time.sleep(self.seconds)


def test_measure_runs_until_min_seconds() -> None:
    sleep_s, min_seconds = 0.005, 0.05
    run = Sleeper(sleep_s)
    t = measure(run, TimingOptions(warmup_runs=2, min_runs=3, min_seconds=min_seconds,
                                   max_runs=1000))
    # Warm-up goes on while runs still get faster, which a loaded machine can make happen.
    assert t.warmup_runs >= 2
    assert run.calls == t.warmup_runs + t.runs
    assert t.runs >= 3
    total_ms = t.mean_ms * t.runs
    assert total_ms >= min_seconds * 1e3 * (1 - 1e-12)
    # Each timed run lasts at least the sleep, so min_seconds is passed after at most
    # ceil(min_seconds / sleep) runs: measuring stops as soon as it is.
    assert t.runs <= math.ceil(min_seconds / sleep_s)
    assert t.min_ms >= sleep_s * 1e3
    assert t.min_ms <= t.ci95_low_ms <= t.median_ms <= t.ci95_high_ms <= t.max_ms


def test_measure_min_runs_when_min_seconds_is_zero() -> None:
    run = Sleeper(0.001)
    t = measure(run, TimingOptions(warmup_runs=1, min_runs=7, min_seconds=0.0, max_runs=50))
    assert t.runs == 7
    assert t.warmup_runs >= 1 and run.calls == t.warmup_runs + 7


def test_measure_min_runs_even_when_min_seconds_is_reached() -> None:
    run = Sleeper(0.004)
    t = measure(run, TimingOptions(warmup_runs=0, min_runs=6, min_seconds=0.001, max_runs=50))
    assert t.runs == 6
    assert run.calls == 6
    assert t.warmup_runs == 0


def test_measure_respects_max_runs() -> None:
    run = Sleeper(0.001)
    t = measure(run, TimingOptions(warmup_runs=3, min_runs=2, min_seconds=60.0, max_runs=5))
    assert t.runs == 5
    assert t.warmup_runs >= 3 and run.calls == t.warmup_runs + 5


def test_measure_times_in_milliseconds() -> None:
    run = Sleeper(0.02)
    t = measure(run, TimingOptions(warmup_runs=0, min_runs=3, min_seconds=0.0, max_runs=3))
    assert t.runs == 3
    assert t.min_ms >= 20.0
    assert t.median_ms < 2000.0  # milliseconds, not microseconds or nanoseconds


def test_measure_validates_options() -> None:
    run = Sleeper(0.0)
    with pytest.raises(InvalidArgument):
        measure(run, TimingOptions(min_runs=0))
    assert run.calls == 0


# --------------------------------------------------------------------------------------------
# TimingOptions.validated
# --------------------------------------------------------------------------------------------


def test_default_options_are_valid() -> None:
    options = TimingOptions()
    assert options.validated() == options


@pytest.mark.parametrize(
    "options",
    [
        TimingOptions(warmup_runs=0, min_runs=1, min_seconds=0.0, max_runs=1),
        TimingOptions(warmup_runs=5, min_runs=10, min_seconds=2.0, max_runs=10),
    ],
)
def test_boundary_options_are_valid(options: TimingOptions) -> None:
    assert options.validated() is options


@pytest.mark.parametrize(
    "options",
    [
        TimingOptions(warmup_runs=-1),
        TimingOptions(min_runs=0),
        TimingOptions(min_runs=-3),
        TimingOptions(min_seconds=-0.5),
        TimingOptions(min_runs=10, max_runs=9, protocol=FIXED),
        TimingOptions(protocol="adaptive"),
        TimingOptions(ratio_width=-0.01),
        TimingOptions(ratio_width=math.nan),
        TimingOptions(min_pairs=0),
        TimingOptions(min_runs=1, max_runs=0),
    ],
)
def test_bad_options_are_rejected(options: TimingOptions) -> None:
    with pytest.raises(InvalidArgument):
        options.validated()


def test_nan_min_seconds_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        TimingOptions(min_seconds=math.nan).validated()


def test_infinite_min_seconds_is_rejected_or_bounded_by_max_runs() -> None:
    run = Sleeper(0.0)
    try:
        t = measure(run, TimingOptions(warmup_runs=0, min_runs=1, min_seconds=math.inf,
                                       max_runs=4))
    except InvalidArgument:
        return
    assert t.runs == 4
