"""The challenge's scores (SPEC.md section 3).

    score = alpha * (PSNR - PSNR_base) + beta * (P - SSIM_base) + gamma * min(4, T_base / T)

P is the MS-SSIM in the validation phase; in the final phase
P - SSIM_base = kappa * (MOS - MOS_ref).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.core.errors import InvalidArgument
from services.core.track import Phase, Track


@dataclass(frozen=True)
class ScoreWeights:
    alpha: float  # per dB of PSNR
    beta: float  # per unit of MS-SSIM
    gamma: float  # per unit of speed-up over the baseline


@dataclass(frozen=True)
class TrackConstants:
    psnr_base: float
    ssim_base: float
    weights: dict[str, ScoreWeights]  # score name "a" | "b" | "c" -> weights
    mos_ref: float | None  # SRCNN's MOS in the final user study, where published


TRACKS = {
    Track.A: TrackConstants(
        psnr_base=26.5,
        ssim_base=0.94,
        weights={"a": ScoreWeights(4, 100, 1), "b": ScoreWeights(1, 400, 1),
                 "c": ScoreWeights(2, 200, 1.5)},
        mos_ref=None,
    ),
    Track.B: TrackConstants(
        psnr_base=21.0,
        ssim_base=0.90,
        weights={"a": ScoreWeights(4, 100, 2), "b": ScoreWeights(1, 400, 2),
                 "c": ScoreWeights(2, 200, 2.9)},
        mos_ref=2.295,
    ),
}
KAPPA = 0.0719
SPEED_CAP = 4.0


@dataclass(frozen=True)
class Scores:
    score_a: float
    score_b: float
    score_c: float


# The scores of a final-phase result whose MOS is not known yet (set later by SetMos).
UNSCORED = Scores(score_a=math.nan, score_b=math.nan, score_c=math.nan)


@dataclass(frozen=True)
class ScoreInputs:
    track: Track
    phase: Phase
    psnr: float
    msssim: float
    runtime_ms: float
    baseline_runtime_ms: float
    mos: float | None = None
    kappa: float = KAPPA
    mos_ref: float | None = None  # None: the track's published value
    constants: TrackConstants | None = None  # a challenge's own; None: SPEC.md section 3

    @property
    def track_constants(self) -> TrackConstants:
        return self.constants or TRACKS[self.track]


@dataclass(frozen=True)
class ScoreConstants:
    """What a result records of the constants that produced it."""

    psnr_base: float
    ssim_base: float
    kappa: float
    mos_ref: float
    speed_cap: float


def perceptual_term(inputs: ScoreInputs) -> float:
    """P - SSIM_base for the phase."""
    constants = inputs.track_constants
    if inputs.phase is Phase.VALIDATION:
        return inputs.msssim - constants.ssim_base
    if inputs.mos is None:
        raise InvalidArgument("the final phase scores a MOS: give the model's MOS")
    return inputs.kappa * (inputs.mos - resolved_mos_ref(inputs))


def resolved_mos_ref(inputs: ScoreInputs) -> float:
    mos_ref = inputs.mos_ref if inputs.mos_ref is not None else inputs.track_constants.mos_ref
    if mos_ref is None:
        raise InvalidArgument(
            f"track {inputs.track.value} has no published baseline MOS; give mos_ref explicitly"
        )
    return mos_ref


def speed_term(runtime_ms: float, baseline_runtime_ms: float) -> float:
    if not all(math.isfinite(t) and t > 0 for t in (runtime_ms, baseline_runtime_ms)):
        raise InvalidArgument(
            f"runtimes must be positive, got {runtime_ms} ms and baseline {baseline_runtime_ms} ms"
        )
    return min(SPEED_CAP, baseline_runtime_ms / runtime_ms)


def compute_scores(inputs: ScoreInputs) -> Scores:
    constants = inputs.track_constants
    fidelity = inputs.psnr - constants.psnr_base
    perceptual = perceptual_term(inputs)
    speed = speed_term(inputs.runtime_ms, inputs.baseline_runtime_ms)

    def score(name: str) -> float:
        w = constants.weights[name]
        return w.alpha * fidelity + w.beta * perceptual + w.gamma * speed

    return Scores(score_a=score("a"), score_b=score("b"), score_c=score("c"))


def score_constants(inputs: ScoreInputs) -> ScoreConstants:
    constants = inputs.track_constants
    final = inputs.phase is Phase.FINAL
    return ScoreConstants(
        psnr_base=constants.psnr_base,
        ssim_base=constants.ssim_base,
        kappa=inputs.kappa if final else 0.0,
        mos_ref=resolved_mos_ref(inputs) if final else 0.0,
        speed_cap=SPEED_CAP,
    )
