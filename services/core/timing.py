"""Timing records: the options of a measurement and its figures, with where and how they were
measured, a runtime comparison with the baseline, and the check that the timing input is not
special to the model. The measurement itself is the inference service's (services/inference/
timing.py, integrity.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.core.errors import InvalidArgument


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


@dataclass(frozen=True)
class RuntimeComparison:
    """A Comparison with where and how each side was measured."""

    solution: DeviceTiming
    baseline: DeviceTiming
    speed_ratio: float
    ratio_ci95_low: float
    ratio_ci95_high: float
