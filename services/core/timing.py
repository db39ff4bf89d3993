"""Timing records: the options of a measurement and its figures, with where and how they were
measured, a runtime comparison with the baseline, and the check that the timing input is not
special to the model. The measurement itself is the inference service's (services/inference/
timing.py, integrity.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.core.errors import InvalidArgument

SEQUENTIAL = "sequential"
FIXED = "fixed"
PROTOCOLS = (SEQUENTIAL, FIXED)
# Why a comparison stopped.
STOP_WIDTH = "width"  # sequential: the ratio's interval became narrow enough
STOP_MAX_PAIRS = "max_pairs"  # sequential: max_runs pairs, the interval still wider
STOP_BUDGET = "max_seconds"  # sequential: max_seconds of timed runs, the interval still wider
STOP_FIXED = "fixed"  # fixed: each side had min_runs and min_seconds of runs (or max_runs)
STOP_CACHED = "cached baseline"  # --timing-mode cached: the model alone, a kept baseline figure


@dataclass(frozen=True)
class TimingOptions:
    """How long a timing goes on. `sequential` (a comparison): model and baseline alternate in
    pairs (a block of runs of the faster side against one run of the slower, so that a pair
    costs about two runs of the slower side whatever the model's speed) until the speed
    ratio's 95% interval is within +/- ratio_width (relative to its centre), after at least
    min_pairs pairs and at most max_runs pairs. `fixed` (the earlier protocol, and a model
    timed alone): min_runs runs and min_seconds of runs on each side, at most max_runs."""

    warmup_runs: int = 3
    min_runs: int = 10
    min_seconds: float = 2.0
    max_runs: int = 200
    protocol: str = SEQUENTIAL
    ratio_width: float = 0.02
    # The sequential interval (a sign-test interval at 97.5%) needs 7 pairs.
    min_pairs: int = 7
    # Sequential: seconds of timed runs (both sides) after which the pairs stop, however wide
    # the interval still is (a loaded machine would otherwise run to max_runs pairs: over an
    # hour for a model as slow as SRCNN); 0: no budget.
    max_seconds: float = 120.0

    def validated(self) -> TimingOptions:
        if not (self.warmup_runs >= 0 and self.min_runs >= 1
                and math.isfinite(self.min_seconds) and self.min_seconds >= 0):
            raise InvalidArgument(
                "timing needs warmup_runs >= 0, min_runs >= 1 and a finite min_seconds >= 0; "
                f"got {self}"
            )
        if self.protocol not in PROTOCOLS:
            raise InvalidArgument(
                f"unknown timing protocol {self.protocol!r}; use {' or '.join(PROTOCOLS)}")
        if not (math.isfinite(self.ratio_width) and self.ratio_width >= 0
                and self.min_pairs >= 1):
            raise InvalidArgument(
                "timing needs a finite ratio_width >= 0 (0: stop at max_runs pairs) and "
                f"min_pairs >= 1; got ratio_width {self.ratio_width}, min_pairs "
                f"{self.min_pairs}")
        if not (math.isfinite(self.max_seconds) and self.max_seconds >= 0):
            raise InvalidArgument(
                f"timing max_seconds must be finite and >= 0 (0: no budget); got "
                f"{self.max_seconds}")
        if self.max_runs < 1:
            raise InvalidArgument(f"timing max_runs must be at least 1; got {self.max_runs}")
        if self.protocol == FIXED and self.max_runs < self.min_runs:
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
class Stopping:
    """How a comparison was run and why it ended."""

    protocol: str = ""  # sequential | fixed; empty: not recorded (an older result)
    pairs: int = 0  # timed pairs (sequential) or rounds A B (fixed)
    solution_block: int = 1  # runs of the model in each pair
    baseline_block: int = 1  # runs of the baseline in each pair
    # The ratio's 95% interval reached, +/- relative to its centre: (high - low) / (high + low).
    width: float = 0.0
    reason: str = ""  # one of the STOP_* above; empty: not recorded
    # What an earlier timing on this node spared this one (e.g. "baseline warm-up"): never a
    # timing figure of the model itself.
    reused: tuple[str, ...] = ()


def relative_width(low: float, high: float) -> float:
    return (high - low) / (high + low) if high + low > 0 and math.isfinite(high) else math.inf


@dataclass(frozen=True)
class Comparison:
    """A solution and the baseline timed in alternation, and the speed ratio baseline/solution
    (the score's speed term before its cap) with its 95% interval."""

    solution: Timing
    baseline: Timing
    speed_ratio: float
    ratio_ci95_low: float
    ratio_ci95_high: float
    check: TimingCheck = TimingCheck()  # of the solution's timing
    stopping: Stopping = Stopping()


@dataclass(frozen=True)
class RuntimeComparison:
    """A Comparison with where and how each side was measured."""

    solution: DeviceTiming
    baseline: DeviceTiming
    speed_ratio: float
    ratio_ci95_low: float
    ratio_ci95_high: float
    stopping: Stopping = Stopping()
