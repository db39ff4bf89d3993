"""MS-SSIM stays within 1e-6 of the exact value on the inputs most likely to break a fast kernel
(issue 19): constant images, extreme contrast, tiny sizes at the scale limit, the edges of the
work split between threads, values far outside [0, 1], large means with tiny variances.

Every expected value comes from tests/reference.py: `msssim_tf_ref` filters with the full 11x11
window as 121 explicit products (no separable split, float64), `msssim_numpy_ref` is the
official NumPy code (FFT convolution, float64). Neither shares code with services.metrics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from services.metrics import ms_ssim
from services.metrics.quality import FULL_SCALE_CHUNK_ROWS
from tests.reference import msssim_numpy_ref, msssim_tf_ref

F32 = NDArray[np.float32]

TOL = 1e-6
TF_MIN_SIDE = 161  # the tf definition's limit: the fifth scale still holds the 11-tap window


def _assert_within(got: float, want: float, what: str) -> None:
    if math.isnan(want):
        assert math.isnan(got), f"{what}: got {got!r}, exact value is NaN"
        return
    assert abs(got - want) <= TOL, f"{what}: got {got!r}, exact {want!r}, diff {got - want:.3g}"


def _check_tf(output: np.ndarray, target: np.ndarray, what: str, max_val: float = 1.0) -> None:
    _assert_within(ms_ssim(output, target, flavor="tf", max_val=max_val),
                   msssim_tf_ref(output, target, max_val), what)


def _check_numpy(output: np.ndarray, target: np.ndarray, what: str) -> None:
    """The numpy flavour at max_val 1 against the official code at 0..255."""
    want = msssim_numpy_ref(output.astype(np.float64)[None] * 255.0,
                            target.astype(np.float64)[None] * 255.0, max_val=255)
    _assert_within(ms_ssim(output, target, flavor="numpy"), want, what)


def _textured(h: int, w: int, seed: int, channels: int = 3) -> F32:
    rng = np.random.default_rng(seed)
    coarse = rng.random((h // 8 + 1, w // 8 + 1, channels))
    img = 0.5 * np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:h, :w]
    return np.asarray(img + 0.5 * rng.random((h, w, channels)), dtype=np.float32)


def _checkerboard(h: int, w: int, period: int) -> F32:
    i, j = np.indices((h, w))
    board = ((i // period + j // period) % 2).astype(np.float32)
    return np.repeat(board[:, :, None], 3, axis=2)


# --------------------------------------------------------------------------------------------
# constant images
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(TF_MIN_SIDE, TF_MIN_SIDE), (200, 300)])
@pytest.mark.parametrize("values", [(0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.2, 0.7), (0.0, 1.0),
                                    (0.001, 0.002)])
def test_constant_pairs(shape: tuple[int, int], values: tuple[float, float]) -> None:
    """Zero variance everywhere: contrast-structure is c2 / c2 and only luminance differs."""
    output = np.full((*shape, 3), values[0], np.float32)
    target = np.full((*shape, 3), values[1], np.float32)
    _check_tf(output, target, f"tf constants {values} {shape}")
    _check_numpy(output, target, f"numpy constants {values} {shape}")


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_one_constant_image(value: float) -> None:
    target = _textured(TF_MIN_SIDE + 20, TF_MIN_SIDE + 40, 1)
    output = np.full_like(target, value)
    _check_tf(output, target, f"tf constant {value} vs texture")
    _check_numpy(output, target, f"numpy constant {value} vs texture")


# --------------------------------------------------------------------------------------------
# extreme contrast
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("period", [1, 2, 3, 5, 16])
def test_checkerboards_and_their_inverse(period: int) -> None:
    """0/1 checkerboards: the largest variances [0, 1] allows; against the inverse every
    contrast-structure term is negative (ReLU'd to 0 in tf, NaN in the NumPy code)."""
    board = _checkerboard(TF_MIN_SIDE + 13, TF_MIN_SIDE + 30, period)
    shifted = np.roll(board, 1, axis=1)
    _check_tf(board, shifted, f"tf checkerboard {period} vs shifted")
    _check_numpy(board, shifted, f"numpy checkerboard {period} vs shifted")
    _check_tf(board, 1.0 - board, f"tf checkerboard {period} vs inverse")
    _check_numpy(board, 1.0 - board, f"numpy checkerboard {period} vs inverse")


def test_single_bright_pixels_on_black() -> None:
    target = np.zeros((TF_MIN_SIDE, 190, 3), np.float32)
    target[::37, ::23] = 1.0
    output = np.roll(target, 2, axis=0)
    _check_tf(output, target, "tf sparse bright pixels")
    _check_numpy(output, target, "numpy sparse bright pixels")


def test_values_far_outside_the_unit_range() -> None:
    """Unclipped model outputs (track B measures MS-SSIM on them): large squares, so the
    variances are differences of large sums."""
    target = _textured(180, 210, 2)
    output = (60.0 * target - 30.0).astype(np.float32)
    _check_tf(output, target, "tf output in [-30, 30]")
    _check_numpy(output, target, "numpy output in [-30, 30]")


def test_large_mean_tiny_variance() -> None:
    """Bright, nearly flat images: the variances are 1e-8 against means near 1, where
    E[x^2] - E[x]^2 cancels almost everything (float32 arithmetic would not survive this)."""
    rng = np.random.default_rng(3)
    target = (0.95 + 1e-4 * rng.standard_normal((190, 170, 3))).astype(np.float32)
    output = (0.95 + 1e-4 * rng.standard_normal((190, 170, 3))).astype(np.float32)
    _check_tf(output, target, "tf bright and flat")
    _check_numpy(output, target, "numpy bright and flat")


def test_max_val_255() -> None:
    target = np.round(_textured(TF_MIN_SIDE + 3, TF_MIN_SIDE + 100, 4) * 255.0)
    output = np.clip(target + np.random.default_rng(4).normal(0.0, 20.0, target.shape), 0, 255)
    _check_tf(output.astype(np.float32), target.astype(np.float32), "tf 0..255", max_val=255.0)


# --------------------------------------------------------------------------------------------
# sizes: the scale limit, odd sides, the small-image path and the threads' row chunks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(161, 161), (161, 162), (162, 161), (163, 321), (321, 163)])
def test_tf_flavour_at_the_scale_limit(shape: tuple[int, int]) -> None:
    """161 px leaves exactly 11 px at the fifth scale (one filter position); odd sides are
    extended by repeating their last row/column at every downsampling."""
    target = _textured(*shape, 5)
    output = np.clip(target + np.random.default_rng(5).normal(0.0, 0.1, target.shape),
                     0, 1).astype(np.float32)
    _check_tf(output, target, f"tf {shape}")


@pytest.mark.parametrize("side", [136, 137, 138, 139, 150])
def test_numpy_flavour_around_the_one_call_size(side: int) -> None:
    """Images whose full-scale valid area is just below / at / above 128x128 take the one-call
    path or the threaded one; the window shrinks at the coarse scales either way."""
    target = _textured(side, side + 1, 6)
    output = np.clip(target + np.random.default_rng(6).normal(0.0, 0.05, target.shape),
                     0, 1).astype(np.float32)
    _check_numpy(output, target, f"numpy {side}x{side + 1}")


@pytest.mark.parametrize("extra", [-1, 0, 1, FULL_SCALE_CHUNK_ROWS - 1])
def test_full_scale_chunk_edges(extra: int) -> None:
    """Heights whose full-scale rows end just before, at and just after a chunk boundary. The
    noise grows down the image, so a chunk lost or measured twice would move the value."""
    h = 10 + 6 * FULL_SCALE_CHUNK_ROWS + extra
    target = _textured(h, 170, 7)
    ramp = np.linspace(0.0, 0.3, h, dtype=np.float32)[:, None, None]
    noise = np.random.default_rng(7).standard_normal(target.shape).astype(np.float32)
    output = (target + ramp * noise).astype(np.float32)
    _check_tf(output, target, f"tf height {h}")
    _check_numpy(output, target, f"numpy height {h}")


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_channel_counts(channels: int) -> None:
    target = _textured(170, 190, 8, channels)
    output = np.clip(target + np.random.default_rng(8).normal(0.0, 0.1, target.shape),
                     0, 1).astype(np.float32)
    _check_tf(output, target, f"tf {channels} channels")


def test_float64_inputs() -> None:
    """float64 images (the Y channel, callers' own arrays) take the kernels' other signature."""
    target = _textured(175, 185, 9).astype(np.float64)
    output = np.clip(target + np.random.default_rng(9).normal(0.0, 0.1, target.shape), 0, 1)
    _check_tf(output, target, "tf float64")
    _check_numpy(output.astype(np.float32), target.astype(np.float32), "numpy float32 copy")


def test_many_random_pairs_of_many_sizes() -> None:
    """A sweep rather than a sample: 40 pairs, sizes from the limit up, noise from none to
    heavy, structure from flat to fine."""
    rng = np.random.default_rng(10)
    for k in range(40):
        h, w = (int(v) for v in rng.integers(TF_MIN_SIDE, 260, size=2))
        target = _textured(h, w, 100 + k)
        sigma = float(rng.choice([0.0, 0.01, 0.1, 0.5]))
        output = np.clip(target + rng.normal(0.0, sigma, target.shape), 0, 1).astype(np.float32)
        _check_tf(output, target, f"tf pair {k} {h}x{w} noise {sigma}")
