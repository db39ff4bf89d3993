"""services.metrics quality API against the float64 references of tests/reference.py.

The references are themselves checked against TensorFlow's own ops on small images, where
TensorFlow's float32 error is small (SPEC section 2, "Numerical exactness").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from PIL import Image

from services.core.errors import InvalidArgument
from services.metrics import Flavor, QualityOptions, evaluate_pair, ms_ssim, psnr
from tests.conftest import DATA, missing_data, require_data
from tests.reference import (
    msssim_numpy_ref,
    msssim_tf_ref,
    psnr_ref,
    track_a_input_ref,
)

pytestmark = pytest.mark.usefixtures("metric_kernels")

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


PSNR_TOL = 1e-4  # dB
MSSSIM_TOL = 1e-6

TF_PSNR_TOL = 1e-3  # dB, TensorFlow (float32) against the float64 reference
TF_MSSSIM_TOL = 1e-5

N_DPED_PATCHES = 20


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _load_uint8(path: Path) -> NDArray[np.uint8]:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _to_unit(img: NDArray[np.uint8]) -> F32:
    """uint8 -> float32 / 255, as the official scripts feed the model."""
    return (img.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def _x255(img: F32) -> F64:
    """A [0, 1]-scale image in the NumPy flavour's 0..255 scale, batch of 1."""
    return img.astype(np.float64)[np.newaxis] * 255.0


def _numpy_ref_unit(output: F32, target: F32) -> float:
    """The NumPy flavour's reference for [0, 1]-scale float32 images (max_val 1 <-> 255)."""
    return msssim_numpy_ref(_x255(output), _x255(target), max_val=255)


def _crop(img: F32, border: int) -> F32:
    return img[border : img.shape[0] - border, border : img.shape[1] - border] if border else img


def _clip(img: F32) -> F32:
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _assert_close(got: float, want: float, tol: float, what: str) -> None:
    if math.isnan(want):
        assert math.isnan(got), f"{what}: got {got!r}, reference is NaN"
        return
    if math.isinf(want):
        assert got == want, f"{what}: got {got!r}, reference {want!r}"
        return
    assert abs(got - want) <= tol, f"{what}: got {got!r}, reference {want!r}, diff {got - want:.3g}"


def _random_pair(
    seed: int, h: int, w: int, kind: str, noise: float, lo: float = 0.0, hi: float = 1.0,
    channels: int = 3,
) -> tuple[F32, F32]:
    """A (output, target) float32 pair of HxWxC images.

    kinds: "noisy" (target smooth-ish random, output = target + Gaussian noise), "constant"
    (two different constant images), "one_constant" (constant output, random target),
    "shifted" (output = target + a constant), "inverted" (output = 1 - target + noise: negative
    contrast terms, so ReLU -> 0 in the tf flavour, NaN in the numpy flavour). Values are
    clipped to [lo, hi]."""
    rng = np.random.default_rng(seed)
    base = rng.random((h, w, channels))
    # Mix in a blurred copy so that images have structure at the coarse scales too.
    blurred = base.copy()
    for axis in (0, 1):
        for _ in range(3):
            blurred = blurred + np.roll(blurred, 1, axis=axis) + np.roll(blurred, -1, axis=axis)
            blurred /= 3.0
    target = 0.5 * base + 0.5 * (blurred - blurred.min()) / max(np.ptp(blurred), 1e-12)
    if kind == "noisy":
        output = target + noise * rng.standard_normal((h, w, channels))
    elif kind == "constant":
        target = np.full((h, w, channels), 0.25 + 0.5 * rng.random())
        output = np.full((h, w, channels), 0.5 * rng.random())
    elif kind == "one_constant":
        output = np.full((h, w, channels), rng.random())
    elif kind == "shifted":
        output = target + noise
    elif kind == "inverted":
        output = 1.0 - target + noise * rng.standard_normal((h, w, channels))
    else:
        raise AssertionError(kind)
    target = lo + (hi - lo) * target
    output = lo + (hi - lo) * output
    return (
        np.clip(output, lo, hi).astype(np.float32),
        np.clip(target, lo, hi).astype(np.float32),
    )


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dped_pairs() -> list[tuple[str, F32, F32]]:
    """The first N_DPED_PATCHES DPED track-B patch pairs as (name, iphone/255, canon/255)."""
    iphone_dir = require_data("dped", "patches", "iphone")
    canon_dir = require_data("dped", "patches", "canon")
    names = sorted((p.name for p in iphone_dir.glob("*.jpg")), key=lambda n: int(Path(n).stem))
    if not names:
        missing_data(iphone_dir / "0.jpg")
    pairs = []
    for name in names[:N_DPED_PATCHES]:
        iphone = _to_unit(_load_uint8(iphone_dir / name))
        canon = _to_unit(_load_uint8(canon_dir / name))
        pairs.append((name, iphone, canon))
    return pairs


@pytest.fixture(scope="module")
def hd_pair() -> tuple[F32, F32]:
    """Track A on one HD image: (bicubic x1/4 -> x4 input / 255, target / 255)."""
    hd_dir = require_data("div2k", "HD_res")
    files = sorted(hd_dir.glob("*.png"))
    if not files:
        missing_data(hd_dir / "0.png")
    target = _load_uint8(files[0])
    return _to_unit(track_a_input_ref(target)), _to_unit(target)


@pytest.mark.slow
def test_dped_patches_numpy_flavour_match_reference(
    dped_pairs: list[tuple[str, F32, F32]],
) -> None:
    assert len(dped_pairs) == N_DPED_PATCHES
    for name, iphone, canon in dped_pairs:
        assert iphone.shape == canon.shape == (100, 100, 3)
        _assert_close(
            ms_ssim(iphone, canon, flavor="numpy"),
            _numpy_ref_unit(iphone, canon),
            MSSSIM_TOL,
            f"numpy MS-SSIM of DPED patch {name}",
        )
        _assert_close(psnr(iphone, canon), psnr_ref(iphone, canon), PSNR_TOL, f"PSNR of {name}")


@pytest.mark.slow
def test_dped_patches_track_b_evaluate_pair(dped_pairs: list[tuple[str, F32, F32]]) -> None:
    """Track B options: no crop, PSNR on clipped images, MS-SSIM (numpy) on unclipped output.

    The "model output" here is the iPhone patch pushed slightly outside [0, 1], so that the
    clipping choices matter."""
    options = QualityOptions(
        crop_border=0, clip_psnr_input=True, clip_msssim_input=False, flavor=Flavor.NUMPY,
    )
    for name, iphone, canon in dped_pairs[:5]:
        output = (iphone * 1.2 - 0.1).astype(np.float32)
        output[0, :10] = -0.05
        output[-1, -10:] = 1.05
        result = evaluate_pair(output, canon, options)
        _assert_close(
            result.psnr, psnr_ref(_clip(output), canon), PSNR_TOL, f"track B PSNR of {name}",
        )
        _assert_close(
            result.msssim, _numpy_ref_unit(output, canon), MSSSIM_TOL,
            f"track B MS-SSIM of {name}",
        )


@pytest.mark.slow
def test_div2k_hd_tf_flavour_matches_reference(hd_pair: tuple[F32, F32]) -> None:
    output, target = hd_pair
    assert output.shape == target.shape == (720, 1280, 3)
    _assert_close(psnr(output, target), psnr_ref(output, target), PSNR_TOL, "HD PSNR")
    _assert_close(
        ms_ssim(output, target, flavor="tf"), msssim_tf_ref(output, target), MSSSIM_TOL,
        "HD tf MS-SSIM",
    )


@pytest.mark.slow
def test_div2k_full_size_track_a_protocol() -> None:
    """SPEC section 2 track A end to end on one full-size DIV2K image (2008x1324 after the
    border crop, where TensorFlow's float32 sums are off by ~5e-4), the bicubic input standing
    in for the model output."""
    files = sorted(require_data("div2k", "original").glob("*.png"))
    if not files:
        missing_data(DATA / "div2k" / "original" / "0.png")
    target_u8 = _load_uint8(files[0])
    low = track_a_input_ref(target_u8)
    h, w = low.shape[:2]
    output, target = _to_unit(low), _to_unit(target_u8[:h, :w])
    result = evaluate_pair(output, target, QualityOptions(crop_border=16))
    out_c, tgt_c = _clip(_crop(output, 16)), _clip(_crop(target, 16))
    _assert_close(result.psnr, psnr_ref(out_c, tgt_c), PSNR_TOL, f"{files[0].name} PSNR")
    _assert_close(
        result.msssim, msssim_tf_ref(out_c, tgt_c), MSSSIM_TOL, f"{files[0].name} MS-SSIM",
    )


@pytest.mark.slow
def test_div2k_hd_track_a_evaluate_pair(hd_pair: tuple[F32, F32]) -> None:
    """Track A options: 16-px border crop, both images clipped, tf flavour."""
    output, target = hd_pair
    options = QualityOptions(
        crop_border=16, clip_psnr_input=True, clip_msssim_input=True, flavor=Flavor.TF,
    )
    result = evaluate_pair(output, target, options)
    out_c, tgt_c = _clip(_crop(output, 16)), _clip(_crop(target, 16))
    assert out_c.shape == (688, 1248, 3)
    _assert_close(result.psnr, psnr_ref(out_c, tgt_c), PSNR_TOL, "track A HD PSNR")
    _assert_close(result.msssim, msssim_tf_ref(out_c, tgt_c), MSSSIM_TOL, "track A HD MS-SSIM")


# --------------------------------------------------------------------------------------------
# randomised inputs
# --------------------------------------------------------------------------------------------

KINDS = st.sampled_from(
    ["noisy", "noisy", "noisy", "constant", "one_constant", "shifted", "inverted"]
)
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
NOISE = st.floats(min_value=0.0, max_value=0.5, allow_nan=False)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(161, 260), w=st.integers(161, 260), seed=SEEDS, kind=KINDS, noise=NOISE,
    channels=st.sampled_from([3, 3, 1, 2, 4]),
)
def test_random_tf_flavour_matches_reference(
    h: int, w: int, seed: int, kind: str, noise: float, channels: int,
) -> None:
    """RGB mostly; 1, 2 and 4 channels take the kernel's other strides."""
    output, target = _random_pair(seed, h, w, kind, noise, channels=channels)
    _assert_close(
        ms_ssim(output, target, flavor="tf"), msssim_tf_ref(output, target), MSSSIM_TOL,
        f"tf MS-SSIM {kind} {h}x{w} noise {noise}",
    )
    _assert_close(psnr(output, target), psnr_ref(output, target), PSNR_TOL, f"PSNR {kind}")


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(11, 120), w=st.integers(11, 120), seed=SEEDS, kind=KINDS, noise=NOISE,
    lo=st.sampled_from([0.0, -0.5]), hi=st.sampled_from([1.0, 1.5]),
)
def test_random_numpy_flavour_matches_reference(
    h: int, w: int, seed: int, kind: str, noise: float, lo: float, hi: float,
) -> None:
    """Odd sizes, small sizes (the window shrinks), constants, values outside [0, 1]."""
    output, target = _random_pair(seed, h, w, kind, noise, lo, hi)
    _assert_close(
        ms_ssim(output, target, flavor="numpy"), _numpy_ref_unit(output, target), MSSSIM_TOL,
        f"numpy MS-SSIM {kind} {h}x{w} noise {noise} range [{lo}, {hi}]",
    )
    _assert_close(psnr(output, target), psnr_ref(output, target), PSNR_TOL, f"PSNR {kind}")


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(1, 64), w=st.integers(1, 64), seed=SEEDS,
    max_val=st.sampled_from([1.0, 255.0, 2.0]),
)
def test_random_psnr_matches_reference(h: int, w: int, seed: int, max_val: float) -> None:
    rng = np.random.default_rng(seed)
    a = (max_val * rng.random((h, w, 3))).astype(np.float32)
    b = (max_val * rng.random((h, w, 3))).astype(np.float32)
    _assert_close(psnr(a, b, max_val=max_val), psnr_ref(a, b, max_val), PSNR_TOL, "PSNR")


@pytest.mark.parametrize(
    ("flavor", "shape"),
    [("tf", (161, 161, 3)), ("tf", (200, 171, 3)), ("numpy", (200, 171, 3)),
     ("numpy", (64, 37, 3)), ("numpy", (11, 11, 3))],
)
def test_identical_images(flavor: str, shape: tuple[int, int, int]) -> None:
    img = np.random.default_rng(1).random(shape).astype(np.float32)
    assert psnr(img, img.copy()) == math.inf
    assert psnr_ref(img, img.copy()) == math.inf
    _assert_close(ms_ssim(img, img.copy(), flavor=flavor), 1.0, MSSSIM_TOL, "MS-SSIM(x, x)")


def test_negative_contrast_relu_vs_nan() -> None:
    """An inverted image: the tf flavour clamps the negative cs terms to 0 (MS-SSIM 0), the
    numpy flavour has no ReLU and gives NaN (a negative number to a fractional power)."""
    output, target = _random_pair(15, 170, 170, "inverted", 0.0)
    assert msssim_tf_ref(output, target) == 0.0
    assert math.isnan(_numpy_ref_unit(output, target))
    _assert_close(ms_ssim(output, target, flavor="tf"), 0.0, MSSSIM_TOL, "tf, inverted")
    assert math.isnan(ms_ssim(output, target, flavor="numpy")), "numpy flavour, inverted"


def test_batch_of_one_equals_hwc() -> None:
    output, target = _random_pair(7, 170, 180, "noisy", 0.1)
    for flavor in ("tf", "numpy"):
        assert ms_ssim(output[None], target[None], flavor=flavor) == pytest.approx(
            ms_ssim(output, target, flavor=flavor), abs=1e-12
        )
    assert psnr(output[None], target[None]) == pytest.approx(psnr(output, target), abs=1e-12)


def test_numpy_flavour_with_max_val_255() -> None:
    output, target = _random_pair(8, 97, 100, "noisy", 0.05)
    o255, t255 = output * np.float32(255), target * np.float32(255)
    _assert_close(
        ms_ssim(o255, t255, flavor="numpy", max_val=255.0),
        msssim_numpy_ref(o255[None], t255[None], max_val=255),
        MSSSIM_TOL,
        "numpy MS-SSIM at max_val 255",
    )
    _assert_close(
        psnr(o255, t255, max_val=255.0), psnr_ref(o255, t255, 255.0), PSNR_TOL, "PSNR at 255",
    )


# --------------------------------------------------------------------------------------------
# the two flavours differ
# --------------------------------------------------------------------------------------------


def test_flavours_differ_on_rgb_but_each_matches_its_reference() -> None:
    """On an RGB image >= 176 px, tf (per channel, then mean) and numpy (channels pooled in
    each scale's means) give different values; each service flavour matches its reference."""
    output, target = _random_pair(11, 190, 200, "noisy", 0.15)
    # Make the channels differ in quality so that pooling order matters.
    output[..., 0] = target[..., 0]
    tf_val = ms_ssim(output, target, flavor="tf")
    np_val = ms_ssim(output, target, flavor="numpy")
    _assert_close(tf_val, msssim_tf_ref(output, target), MSSSIM_TOL, "tf flavour")
    _assert_close(np_val, _numpy_ref_unit(output, target), MSSSIM_TOL, "numpy flavour")
    assert abs(tf_val - np_val) > 1e-4, (tf_val, np_val)


def test_references_agree_on_single_channel() -> None:
    """Reference-only sanity check: on one channel and sides >= 161 (no window shrink) with
    positive contrast terms (no ReLU effect) the two definitions coincide: same window, same
    constants, and reflect-padded box filter + decimation == symmetric pad + 2x2 avg_pool."""
    rng = np.random.default_rng(5)
    target = rng.random((181, 167, 1))
    output = np.clip(target + 0.1 * rng.standard_normal(target.shape), 0.0, 1.0)
    tf_val = msssim_tf_ref(output, target)
    np_val = msssim_numpy_ref(output[None] * 255.0, target[None] * 255.0, max_val=255)
    assert abs(tf_val - np_val) < 1e-12, (tf_val, np_val)


# --------------------------------------------------------------------------------------------
# the references against TensorFlow itself
# --------------------------------------------------------------------------------------------


def _hd_crop_300() -> tuple[F32, F32]:
    target = _load_uint8(require_data("div2k", "HD_res", "1.png"))[200:500, 400:700]
    return _to_unit(track_a_input_ref(target)), _to_unit(target)


def _reference_images() -> list[Any]:
    """(name, loader) cases, loaded when the test runs: the real crop needs the data."""
    random = {"random 161x161": (21, 161, 161, "noisy", 0.05),
              "random 300x257": (22, 300, 257, "noisy", 0.2),
              "random 233x300": (23, 233, 300, "noisy", 0.02),
              "shifted 176x190": (24, 176, 190, "shifted", 0.1)}
    cases = [pytest.param(name, functools.partial(_random_pair, *args), id=name)
             for name, args in random.items()]
    return [*cases, pytest.param("DIV2K HD crop 300x300", _hd_crop_300,
                                 id="DIV2K HD crop 300x300", marks=pytest.mark.slow)]


@pytest.mark.parametrize(("name", "load"), _reference_images())
def test_references_match_tensorflow(name: str, load: Callable[[], tuple[F32, F32]]) -> None:
    import tensorflow as tf

    output, target = load()
    assert tf.executing_eagerly()
    tf_msssim = float(tf.image.ssim_multiscale(output[None], target[None], max_val=1.0)[0])
    tf_psnr = float(tf.image.psnr(output[None], target[None], max_val=1.0)[0])
    _assert_close(msssim_tf_ref(output, target), tf_msssim, TF_MSSSIM_TOL, f"{name} MS-SSIM")
    _assert_close(psnr_ref(output, target), tf_psnr, TF_PSNR_TOL, f"{name} PSNR")


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

Metric = Callable[[F32, F32], float]
METRICS: dict[str, Metric] = {
    "psnr": lambda a, b: psnr(a, b),
    "ms_ssim_tf": lambda a, b: ms_ssim(a, b, flavor="tf"),
    "ms_ssim_numpy": lambda a, b: ms_ssim(a, b, flavor="numpy"),
    "evaluate_pair_tf": lambda a, b: evaluate_pair(a, b, QualityOptions()).psnr,
    "evaluate_pair_numpy": lambda a, b: evaluate_pair(
        a, b, QualityOptions(clip_msssim_input=False, flavor=Flavor.NUMPY)
    ).psnr,
}


@pytest.mark.parametrize("metric", list(METRICS), ids=str)
def test_mismatched_shapes_rejected(metric: str) -> None:
    a = np.zeros((170, 180, 3), np.float32)
    for b in (np.zeros((180, 170, 3), np.float32), np.zeros((170, 180, 1), np.float32)):
        with pytest.raises(InvalidArgument):
            METRICS[metric](a, b)


@pytest.mark.parametrize("metric", list(METRICS), ids=str)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["output", "target"])
def test_non_finite_rejected(metric: str, bad: float, which: str) -> None:
    a = np.random.default_rng(3).random((170, 180, 3)).astype(np.float32)
    b = a.copy()
    (a if which == "output" else b)[5, 7, 1] = bad
    with pytest.raises(InvalidArgument):
        METRICS[metric](a, b)


@pytest.mark.parametrize("shape", [(100, 100, 3), (160, 200, 3), (200, 160, 3)])
def test_tf_flavour_rejects_small_images(shape: tuple[int, int, int]) -> None:
    a = np.random.default_rng(4).random(shape).astype(np.float32)
    with pytest.raises(InvalidArgument):
        ms_ssim(a, a.copy(), flavor="tf")
    with pytest.raises(InvalidArgument):
        evaluate_pair(a, a.copy(), QualityOptions(flavor=Flavor.TF))


def test_tf_flavour_size_limit_applies_after_crop() -> None:
    """180 px minus a 16-px border on each side is 148 < 161."""
    a = np.random.default_rng(6).random((180, 200, 3)).astype(np.float32)
    with pytest.raises(InvalidArgument):
        evaluate_pair(a, a.copy(), QualityOptions(crop_border=16, flavor=Flavor.TF))


def test_numpy_flavour_accepts_dped_patch_size() -> None:
    output, target = _random_pair(9, 100, 100, "noisy", 0.05)
    _assert_close(
        ms_ssim(output, target, flavor="numpy"), _numpy_ref_unit(output, target), MSSSIM_TOL,
        "numpy MS-SSIM 100x100",
    )


# --------------------------------------------------------------------------------------------
# evaluate_pair: crop and clip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip_psnr", [True, False])
@pytest.mark.parametrize("clip_msssim", [True, False])
@pytest.mark.parametrize("crop", [0, 16])
def test_evaluate_pair_tf_crop_and_clip(clip_psnr: bool, clip_msssim: bool, crop: int) -> None:
    output, target = _random_pair(12, 205, 230, "noisy", 0.1, lo=-0.3, hi=1.3)
    assert output.min() < 0.0 and output.max() > 1.0
    options = QualityOptions(
        crop_border=crop, clip_psnr_input=clip_psnr, clip_msssim_input=clip_msssim,
        flavor=Flavor.TF,
    )
    result = evaluate_pair(output, target, options)
    out_c, tgt_c = _crop(output, crop), _crop(target, crop)
    assert out_c.shape == (205 - 2 * crop, 230 - 2 * crop, 3)
    p_out, p_tgt = (_clip(out_c), _clip(tgt_c)) if clip_psnr else (out_c, tgt_c)
    m_out, m_tgt = (_clip(out_c), _clip(tgt_c)) if clip_msssim else (out_c, tgt_c)
    _assert_close(result.psnr, psnr_ref(p_out, p_tgt), PSNR_TOL, f"PSNR {options}")
    _assert_close(result.msssim, msssim_tf_ref(m_out, m_tgt), MSSSIM_TOL, f"MS-SSIM {options}")


@pytest.mark.parametrize("clip_msssim", [True, False])
@pytest.mark.parametrize("crop", [0, 16])
def test_evaluate_pair_numpy_crop_and_clip(clip_msssim: bool, crop: int) -> None:
    output, target = _random_pair(13, 100, 117, "noisy", 0.05, lo=-0.2, hi=1.2)
    options = QualityOptions(
        crop_border=crop, clip_psnr_input=True, clip_msssim_input=clip_msssim,
        flavor=Flavor.NUMPY,
    )
    result = evaluate_pair(output, target, options)
    out_c, tgt_c = _crop(output, crop), _crop(target, crop)
    m_out, m_tgt = (_clip(out_c), _clip(tgt_c)) if clip_msssim else (out_c, tgt_c)
    _assert_close(
        result.psnr, psnr_ref(_clip(out_c), _clip(tgt_c)), PSNR_TOL, f"PSNR {options}",
    )
    _assert_close(
        result.msssim, _numpy_ref_unit(m_out, m_tgt), MSSSIM_TOL, f"MS-SSIM {options}",
    )


def test_evaluate_pair_defaults_are_track_a() -> None:
    opts = QualityOptions()
    assert opts.clip_psnr_input and opts.clip_msssim_input
    assert opts.flavor == Flavor.TF


# --------------------------------------------------------------------------------------------
# the track A input reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 48, 3), (67, 50, 3), (101, 203, 3)])
def test_track_a_input_ref_shape_and_crop(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(14)
    target = rng.integers(0, 256, shape, dtype=np.uint8)
    low = track_a_input_ref(target)
    h, w = shape[0] // 4 * 4, shape[1] // 4 * 4
    assert low.dtype == np.uint8 and low.shape == (h, w, 3)
    # The crop is top-left: the result only depends on target[:h, :w].
    np.testing.assert_array_equal(low, track_a_input_ref(np.ascontiguousarray(target[:h, :w])))
    # Explicit PIL round trip.
    small = Image.fromarray(np.ascontiguousarray(target[:h, :w])).resize(
        (w // 4, h // 4), Image.Resampling.BICUBIC
    )
    np.testing.assert_array_equal(
        low, np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))
    )


def test_track_a_input_ref_constant_image_is_unchanged() -> None:
    target = np.full((40, 36, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(track_a_input_ref(target), target)
