"""services.scorer.scoring against a plain transcription of SPEC.md section 3.

    score = alpha * (PSNR - PSNR_base) + beta * (P - SSIM_base) + gamma * min(4, T_base / T)

The constants and weights below are copied from the SPEC's table, not imported from the code.
"""

from __future__ import annotations

import math

import pytest

from services.core.errors import InvalidArgument
from services.core.track import Phase, Track
from services.scorer.scoring import ScoreInputs, Scores, compute_scores, score_constants, speed_term

# SPEC.md section 3, transcribed.
SPEC_BASES = {"A": (26.5, 0.94), "B": (21.0, 0.90)}  # track -> (PSNR_base, SSIM_base)
SPEC_WEIGHTS = {  # track -> score name -> (alpha, beta, gamma)
    "A": {"a": (4.0, 100.0, 1.0), "b": (1.0, 400.0, 1.0), "c": (2.0, 200.0, 1.5)},
    "B": {"a": (4.0, 100.0, 2.0), "b": (1.0, 400.0, 2.0), "c": (2.0, 200.0, 2.9)},
}
SPEC_KAPPA = 0.0719
SPEC_MOS_REF_B = 2.295
SPEC_CPU_BASELINE_MS = {"A": 3239.0, "B": 3274.0}  # published SRCNN CPU runtimes

TOL = 1e-9


def spec_score(
    track: str,
    name: str,
    psnr: float,
    perceptual_minus_base: float,
    runtime_ms: float,
    baseline_ms: float,
) -> float:
    alpha, beta, gamma = SPEC_WEIGHTS[track][name]
    psnr_base, _ = SPEC_BASES[track]
    return (
        alpha * (psnr - psnr_base)
        + beta * perceptual_minus_base
        + gamma * min(4.0, baseline_ms / runtime_ms)
    )


def spec_scores_validation(
    track: str, psnr: float, msssim: float, runtime_ms: float, baseline_ms: float
) -> dict[str, float]:
    _, ssim_base = SPEC_BASES[track]
    return {
        name: spec_score(track, name, psnr, msssim - ssim_base, runtime_ms, baseline_ms)
        for name in "abc"
    }


def spec_scores_final(
    track: str,
    psnr: float,
    mos: float,
    mos_ref: float,
    runtime_ms: float,
    baseline_ms: float,
    kappa: float = SPEC_KAPPA,
) -> dict[str, float]:
    return {
        name: spec_score(track, name, psnr, kappa * (mos - mos_ref), runtime_ms, baseline_ms)
        for name in "abc"
    }


def as_dict(scores: Scores) -> dict[str, float]:
    return {"a": scores.score_a, "b": scores.score_b, "c": scores.score_c}


def assert_scores(actual: Scores, expected: dict[str, float]) -> None:
    got = as_dict(actual)
    for name in "abc":
        assert got[name] == pytest.approx(expected[name], abs=TOL, rel=1e-12), name


# --------------------------------------------------------------------------------------------
# validation phase
# --------------------------------------------------------------------------------------------

VALIDATION_CASES = [
    # (psnr, msssim, runtime_ms, baseline_ms)
    (26.5, 0.94, 1000.0, 1000.0),
    (28.13, 0.9532, 812.5, 3239.0),
    (24.9, 0.912, 5000.0, 3274.0),  # slower than the baseline: speed term < 1
    (30.0, 0.99, 10.0, 3239.0),  # far faster: capped at 4
    (21.0, 0.90, 3274.0, 3274.0),
    (22.37, 0.9234, 450.0, 1800.0),  # exactly 4x faster: the cap itself
]


@pytest.mark.parametrize("track", ["A", "B"])
@pytest.mark.parametrize(("psnr", "msssim", "runtime", "baseline"), VALIDATION_CASES)
def test_validation_scores_match_spec_formula(
    track: str, psnr: float, msssim: float, runtime: float, baseline: float
) -> None:
    scores = compute_scores(
        ScoreInputs(
            track=Track(track),
            phase=Phase.VALIDATION,
            psnr=psnr,
            msssim=msssim,
            runtime_ms=runtime,
            baseline_runtime_ms=baseline,
        )
    )
    assert_scores(scores, spec_scores_validation(track, psnr, msssim, runtime, baseline))


def test_validation_hand_worked_track_a() -> None:
    # PSNR 27.5 (+1 dB), MS-SSIM 0.95 (+0.01), twice as fast as the baseline (speed 2).
    # a = 4*1 + 100*0.01 + 1*2 = 7;  b = 1 + 4 + 2 = 7;  c = 2 + 2 + 3 = 7
    scores = compute_scores(
        ScoreInputs(Track.A, Phase.VALIDATION, psnr=27.5, msssim=0.95, runtime_ms=1619.5,
                    baseline_runtime_ms=3239.0)
    )
    assert scores.score_a == pytest.approx(7.0, abs=1e-9)
    assert scores.score_b == pytest.approx(7.0, abs=1e-9)
    assert scores.score_c == pytest.approx(7.0, abs=1e-9)


def test_validation_hand_worked_track_b() -> None:
    # PSNR 20.5 (-0.5 dB), MS-SSIM 0.92 (+0.02), 8x faster, capped at 4.
    # a = -2 + 2 + 8 = 8;  b = -0.5 + 8 + 8 = 15.5;  c = -1 + 4 + 11.6 = 14.6
    scores = compute_scores(
        ScoreInputs(Track.B, Phase.VALIDATION, psnr=20.5, msssim=0.92, runtime_ms=409.25,
                    baseline_runtime_ms=3274.0)
    )
    assert scores.score_a == pytest.approx(8.0, abs=1e-9)
    assert scores.score_b == pytest.approx(15.5, abs=1e-9)
    assert scores.score_c == pytest.approx(14.6, abs=1e-9)


def test_validation_ignores_mos() -> None:
    with_mos = compute_scores(
        ScoreInputs(Track.B, Phase.VALIDATION, psnr=22.0, msssim=0.93, runtime_ms=100.0,
                    baseline_runtime_ms=300.0, mos=4.5)
    )
    assert_scores(with_mos, spec_scores_validation("B", 22.0, 0.93, 100.0, 300.0))


# --------------------------------------------------------------------------------------------
# final phase
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mos", [1.0, 2.295, 3.1, 4.75])
def test_final_track_b_uses_default_kappa_and_mos_ref(mos: float) -> None:
    scores = compute_scores(
        ScoreInputs(Track.B, Phase.FINAL, psnr=21.7, msssim=0.0, runtime_ms=1200.0,
                    baseline_runtime_ms=3274.0, mos=mos)
    )
    assert_scores(scores, spec_scores_final("B", 21.7, mos, SPEC_MOS_REF_B, 1200.0, 3274.0))


def test_final_track_b_hand_worked() -> None:
    # MOS one point above SRCNN's 2.295: P - SSIM_base = 0.0719; PSNR +1 dB; speed 2.
    # a = 4 + 7.19 + 4 = 15.19;  b = 1 + 28.76 + 4 = 33.76;  c = 2 + 14.38 + 5.8 = 22.18
    scores = compute_scores(
        ScoreInputs(Track.B, Phase.FINAL, psnr=22.0, msssim=0.5, runtime_ms=1637.0,
                    baseline_runtime_ms=3274.0, mos=3.295)
    )
    assert scores.score_a == pytest.approx(15.19, abs=1e-9)
    assert scores.score_b == pytest.approx(33.76, abs=1e-9)
    assert scores.score_c == pytest.approx(22.18, abs=1e-9)


def test_final_ignores_msssim() -> None:
    low, high = (
        compute_scores(
            ScoreInputs(Track.B, Phase.FINAL, psnr=21.7, msssim=msssim, runtime_ms=900.0,
                        baseline_runtime_ms=3274.0, mos=3.0)
        )
        for msssim in (0.1, 0.99)
    )
    assert low == high


def test_final_custom_kappa_and_mos_ref() -> None:
    scores = compute_scores(
        ScoreInputs(Track.B, Phase.FINAL, psnr=23.0, msssim=0.0, runtime_ms=700.0,
                    baseline_runtime_ms=3274.0, mos=3.5, kappa=0.05, mos_ref=2.0)
    )
    assert_scores(scores, spec_scores_final("B", 23.0, 3.5, 2.0, 700.0, 3274.0, kappa=0.05))


def test_final_track_a_without_mos_ref_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="mos_ref"):
        compute_scores(
            ScoreInputs(Track.A, Phase.FINAL, psnr=27.0, msssim=0.95, runtime_ms=1000.0,
                        baseline_runtime_ms=3239.0, mos=3.0)
        )


def test_final_track_a_with_explicit_mos_ref() -> None:
    scores = compute_scores(
        ScoreInputs(Track.A, Phase.FINAL, psnr=27.0, msssim=0.95, runtime_ms=1000.0,
                    baseline_runtime_ms=3239.0, mos=3.0, mos_ref=2.5)
    )
    assert_scores(scores, spec_scores_final("A", 27.0, 3.0, 2.5, 1000.0, 3239.0))


@pytest.mark.parametrize("track", [Track.A, Track.B])
def test_final_without_mos_is_invalid(track: Track) -> None:
    with pytest.raises(InvalidArgument, match="MOS"):
        compute_scores(
            ScoreInputs(track, Phase.FINAL, psnr=27.0, msssim=0.95, runtime_ms=1000.0,
                        baseline_runtime_ms=3239.0, mos=None, mos_ref=2.0)
        )


def test_score_constants_record_what_was_used() -> None:
    final = score_constants(
        ScoreInputs(Track.B, Phase.FINAL, psnr=21.0, msssim=0.0, runtime_ms=1.0,
                    baseline_runtime_ms=1.0, mos=3.0)
    )
    assert (final.psnr_base, final.ssim_base) == SPEC_BASES["B"]
    assert final.kappa == SPEC_KAPPA
    assert final.mos_ref == SPEC_MOS_REF_B
    assert final.speed_cap == 4.0
    validation = score_constants(
        ScoreInputs(Track.A, Phase.VALIDATION, psnr=21.0, msssim=0.9, runtime_ms=1.0,
                    baseline_runtime_ms=1.0)
    )
    assert (validation.psnr_base, validation.ssim_base) == SPEC_BASES["A"]
    assert validation.speed_cap == 4.0


# --------------------------------------------------------------------------------------------
# speed term
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("track", ["A", "B"])
def test_runtime_equal_to_published_baseline_gives_exactly_gamma(track: str) -> None:
    """At the baseline's own runtime (and quality) every score is exactly its gamma."""
    psnr_base, ssim_base = SPEC_BASES[track]
    baseline = SPEC_CPU_BASELINE_MS[track]
    scores = compute_scores(
        ScoreInputs(Track(track), Phase.VALIDATION, psnr=psnr_base, msssim=ssim_base,
                    runtime_ms=baseline, baseline_runtime_ms=baseline)
    )
    got = as_dict(scores)
    for name in "abc":
        assert got[name] == SPEC_WEIGHTS[track][name][2]
    assert speed_term(baseline, baseline) == 1.0


@pytest.mark.parametrize(
    ("runtime", "baseline", "expected"),
    [
        (3239.0, 3239.0, 1.0),
        (6478.0, 3239.0, 0.5),
        (809.75, 3239.0, 4.0),  # exactly 4x
        (809.0, 3239.0, 4.0),  # just over 4x: capped
        (1.0, 3274.0, 4.0),
        (1e-6, 3274.0, 4.0),
        (3274.0 * 3, 3274.0, 1.0 / 3.0),
    ],
)
def test_speed_term_is_capped_ratio(runtime: float, baseline: float, expected: float) -> None:
    assert speed_term(runtime, baseline) == pytest.approx(expected, rel=1e-15)
    assert speed_term(runtime, baseline) <= 4.0


def test_speed_cap_bounds_every_score() -> None:
    """Beyond 4x, being faster changes nothing."""
    fast = compute_scores(ScoreInputs(Track.A, Phase.VALIDATION, 27.0, 0.95, 100.0, 3239.0))
    faster = compute_scores(ScoreInputs(Track.A, Phase.VALIDATION, 27.0, 0.95, 0.5, 3239.0))
    assert fast == faster
    assert_scores(fast, spec_scores_validation("A", 27.0, 0.95, 809.75, 3239.0))


@pytest.mark.parametrize(
    ("runtime", "baseline"),
    [(0.0, 3239.0), (-1.0, 3239.0), (-0.001, 3274.0), (100.0, 0.0), (100.0, -5.0), (0.0, 0.0)],
)
@pytest.mark.parametrize("track", [Track.A, Track.B])
def test_non_positive_runtimes_are_invalid(track: Track, runtime: float, baseline: float) -> None:
    with pytest.raises(InvalidArgument, match="positive"):
        compute_scores(ScoreInputs(track, Phase.VALIDATION, 27.0, 0.95, runtime, baseline))


@pytest.mark.parametrize(("runtime", "baseline"), [(math.nan, 3239.0), (100.0, math.nan)])
def test_nan_runtimes_are_invalid(runtime: float, baseline: float) -> None:
    with pytest.raises(InvalidArgument):
        speed_term(runtime, baseline)
