"""Jobs: what a team submitted, where its evaluation stands, and what it produced."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from services.core.jobs import JobState
from services.core.timing import DeviceTiming, Stopping, Timing, TimingCheck, TimingProbe
from services.core.track import Phase, Track
from services.scorer.scoring import ScoreConstants, Scores

# The progress stage of a sharded job until every image has been reported.
SHARDS_STAGE = "shards"


def inference_model_name(model_sha256: str) -> str:
    """A model's name on the inference service: by content, so that the same bytes submitted
    twice, or loaded by the scorer and by batch shards, are loaded once."""
    return f"sha256-{model_sha256[:16]}"


@dataclass(frozen=True)
class JobSpec:
    """A submission as accepted: the model is referenced by the SHA-256 of its bytes."""

    track: Track
    phase: Phase
    dataset: str
    model_sha256: str
    model_name: str = ""
    team: str = ""
    request_id: str = ""
    mos: float | None = None
    input_tensor: str = ""
    output_tensor: str = ""
    repository_model: str = ""  # "name/version" in the inference repository, instead of bytes
    sharded: bool = False  # its quality stage is done by batch shards, which report each image
    phase_name: str = ""  # the challenge's phase; empty: the one named like `phase`
    rerun_of: str = ""  # the job it evaluates again (an organiser's rerun)
    baseline: bool = False  # a baseline model's job, submitted by the scorer itself

    def __post_init__(self) -> None:
        # One spelling for "the phase named like `phase`", so a spec read back equals the one
        # stored.
        if not self.phase_name:
            object.__setattr__(self, "phase_name", self.phase.value)

    @property
    def inference_name(self) -> str:
        return inference_model_name(self.model_sha256)


@dataclass(frozen=True)
class JobResult:
    psnr: float
    msssim: float
    mos: float | None
    runtime: DeviceTiming
    baseline_runtime: DeviceTiming
    scores: Scores
    constants: ScoreConstants
    images: int
    software: str
    speed_ratio: float = 0.0  # baseline / solution runtime, before the cap
    speed_ratio_ci95: tuple[float, float] = (0.0, 0.0)
    timing_mode: str = "interleaved"
    # Where the evaluation's time went: busy seconds per pipeline stage (summed over its
    # workers) and the wall seconds of the quality and timing stages.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    timing_stopping: Stopping = Stopping()  # how the timing ran and why it stopped

    @property
    def awaiting_mos(self) -> bool:
        """A final-phase result without its MOS yet: not scored, not ranked."""
        return math.isnan(self.scores.score_a)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> JobResult:
        raw = json.loads(text)

        def check(d: dict[str, Any] | None) -> TimingCheck:
            if d is None:  # a result stored before timing checks existed
                return TimingCheck()
            probes = tuple(TimingProbe(**{**p, "shape": tuple(p["shape"])})
                           for p in d["probes"])
            return TimingCheck(**{**d, "probes": probes})

        def stopping(d: dict[str, Any] | None) -> Stopping:
            if d is None:  # a result stored before stopping was recorded
                return Stopping()
            return Stopping(**{**d, "reused": tuple(d["reused"])})

        def timing(d: dict[str, Any]) -> DeviceTiming:
            return DeviceTiming(**{**d, "timing": Timing(**d["timing"]),
                                   "input_shape": tuple(d["input_shape"]),
                                   "check": check(d.get("check"))})

        return JobResult(
            **{**raw, "runtime": timing(raw["runtime"]),
               "baseline_runtime": timing(raw["baseline_runtime"]),
               "scores": Scores(**raw["scores"]),
               "constants": ScoreConstants(**raw["constants"]),
               "speed_ratio_ci95": tuple(raw.get("speed_ratio_ci95", (0.0, 0.0))),
               "timing_stopping": stopping(raw.get("timing_stopping"))}
        )


@dataclass
class Job:
    job_id: str
    spec: JobSpec
    state: JobState = JobState.QUEUED
    error: str = ""
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    images_done: int = 0
    images_total: int = 0
    stage: str = ""
    result: JobResult | None = field(default=None)
    # Why it failed: "model" (the submission's own failure) or "platform" (never counted
    # against a team's quota).
    failure_kind: str = ""
