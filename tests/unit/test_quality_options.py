"""services.metrics options (issue 4): Y channel, single-scale SSIM, negative-term and
small-image policies, tf_compat; and property-based tests of the fast kernels.

Each option is checked against a plain float64 transcription of its definition written here
(`_ms_ssim_def`, `_ssim_def`, `_luma`), which is itself checked against tests/reference.py (the
official definitions) and, for single-scale SSIM, against `tf.image.ssim`. Inputs are float32,
as the service receives them.
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
from services.metrics import ms_ssim, psnr, ssim
from tests.conftest import require_data
from tests.reference import (
    _ssim_for_multiscale,
    msssim_numpy_ref,
    msssim_tf_ref,
    psnr_ref,
    track_a_input_ref,
)

pytestmark = pytest.mark.usefixtures("metric_kernels")

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


PSNR_TOL = 1e-4  # dB
SSIM_TOL = 1e-6
TF_COMPAT_TOL = 1e-6

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2 = 0.01, 0.03
SIZE, SIGMA = 11, 1.5
TF_MIN_SIDE = 161  # 161 -> 81 -> 41 -> 21 -> 11: the 11-tap window fits the fifth scale


class _NegativeTerm(Exception):
    """Raised by the transcription where the service must raise InvalidArgument."""


class _TooSmall(Exception):
    """Raised by the transcription where the service must raise InvalidArgument."""


# --------------------------------------------------------------------------------------------
# float64 transcriptions of the definitions
# --------------------------------------------------------------------------------------------


def _luma(img: NDArray[np.floating]) -> F64:
    """MATLAB rgb2ycbcr's Y for a [0, 1] RGB image (BT.601), as HxWx1 float64 in [0, 1]."""
    x = np.asarray(img, dtype=np.float64)
    y = (16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0
    return y[..., np.newaxis]


def _gauss(size: int, sigma: float) -> F64:
    """size x size Gaussian, sum 1, centred between pixels for even sizes (MATLAB fspecial
    'gaussian', and TF's _fspecial_gauss which is the same numbers as a softmax)."""
    c = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter(img: F64, window: F64) -> F64:
    """Plain 2-D 'valid' correlation of each channel with a k x k window, k*k taps summed."""
    k = window.shape[0]
    h, w = img.shape[0] - k + 1, img.shape[1] - k + 1
    out = np.zeros((h, w, img.shape[2]))
    for u in range(k):
        for v in range(k):
            out += window[u, v] * img[u : u + h, v : v + w]
    return out


def _ssim_maps(x: F64, y: F64, size: int, sigma: float, max_val: float) -> tuple[F64, F64]:
    """Per-position, per-channel (luminance * cs, cs) over the 'valid' area."""
    window = _gauss(size, sigma)
    c1, c2 = (K1 * max_val) ** 2, (K2 * max_val) ** 2
    mx, my = _filter(x, window), _filter(y, window)
    sxx = _filter(x * x, window) - mx * mx
    syy = _filter(y * y, window) - my * my
    sxy = _filter(x * y, window) - mx * my
    luminance = (2.0 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2.0 * sxy + c2) / (sxx + syy + c2)
    return luminance * cs, cs


def _half(img: F64) -> F64:
    """2x2 mean with stride 2; an odd side is first extended by repeating its last line."""
    if img.shape[0] % 2:
        img = np.concatenate([img, img[-1:]], axis=0)
    if img.shape[1] % 2:
        img = np.concatenate([img, img[:, -1:]], axis=1)
    return (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2]) / 4.0


def _window(h: int, w: int, shrink: bool) -> tuple[int, float]:
    if not shrink:
        if min(h, w) < SIZE:
            raise _TooSmall(f"{h}x{w} < {SIZE}")
        return SIZE, SIGMA
    size = min(SIZE, h, w)
    return size, size * SIGMA / SIZE


def _pool(m: F64, flavor: str) -> F64:
    """tf: mean per channel (shape (C,)); numpy: mean over positions and channels (shape ())."""
    return np.asarray(m.mean(axis=(0, 1)) if flavor == "tf" else m.mean())


def _ssim_def(
    a: NDArray[np.floating], b: NDArray[np.floating], flavor: str, max_val: float = 1.0,
    shrink: bool | None = None,
) -> float:
    """Single-scale SSIM. tf: tf.image.ssim (mean of luminance * cs per channel, then the mean
    over channels). numpy: _SSIMForMultiScale's ssim (pooled over channels, window shrunk to
    the image)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    shrink = (flavor == "numpy") if shrink is None else shrink
    size, sigma = _window(x.shape[0], x.shape[1], shrink)
    s, _ = _ssim_maps(x, y, size, sigma, max_val)
    return float(np.mean(_pool(s, flavor)))


def _ms_ssim_def(
    a: NDArray[np.floating], b: NDArray[np.floating], flavor: str, max_val: float = 1.0,
    negative: str | None = None, shrink: bool | None = None,
) -> float:
    """MS-SSIM of either flavour with either policy, e.g. the tf flavour with the NumPy
    code's window shrink, or the numpy flavour with TF's ReLU."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    negative = negative or ("relu" if flavor == "tf" else "nan")
    shrink = (flavor == "numpy") if shrink is None else shrink
    if not shrink and min(x.shape[:2]) < TF_MIN_SIDE:
        raise _TooSmall(f"{x.shape[:2]}")
    terms = []
    for scale in range(len(WEIGHTS)):
        if scale:
            x, y = _half(x), _half(y)
        size, sigma = _window(x.shape[0], x.shape[1], shrink)
        s, cs = _ssim_maps(x, y, size, sigma, max_val)
        terms.append(_pool(cs if scale < len(WEIGHTS) - 1 else s, flavor))
    if negative == "error" and any(np.any(t < 0) for t in terms):
        raise _NegativeTerm(str(terms))
    if negative == "relu":
        terms = [np.maximum(t, 0.0) for t in terms]
    with np.errstate(invalid="ignore"):
        value = np.prod([t**w for t, w in zip(terms, WEIGHTS, strict=True)], axis=0)
    return float(np.mean(value))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _assert_close(got: float, want: float, tol: float, what: str) -> None:
    if math.isnan(want):
        assert math.isnan(got), f"{what}: got {got!r}, definition gives NaN"
        return
    if math.isinf(want):
        assert got == want, f"{what}: got {got!r}, definition gives {want!r}"
        return
    assert abs(got - want) <= tol, f"{what}: got {got!r}, want {want!r}, diff {got - want:.3g}"


def _pair(
    seed: int, h: int, w: int, kind: str = "noisy", noise: float = 0.1, lo: float = 0.0,
    hi: float = 1.0,
) -> tuple[F32, F32]:
    """(output, target) float32 HxWx3 with structure at all scales. kinds: noisy, constant,
    shifted, inverted (negative contrast terms), channel_inverted (channel 0 only)."""
    rng = np.random.default_rng(seed)
    base = rng.random((h, w, 3))
    blurred = base.copy()
    for axis in (0, 1):
        for _ in range(3):
            blurred = (blurred + np.roll(blurred, 1, axis) + np.roll(blurred, -1, axis)) / 3.0
    target = 0.5 * base + 0.5 * (blurred - blurred.min()) / max(float(np.ptp(blurred)), 1e-12)
    output = target + noise * rng.standard_normal((h, w, 3))
    if kind == "constant":
        target = np.full((h, w, 3), 0.25 + 0.5 * rng.random())
        output = np.full((h, w, 3), 0.5 * rng.random())
    elif kind == "shifted":
        output = target + noise
    elif kind == "inverted":
        output = 1.0 - output
    elif kind == "channel_inverted":
        output[..., 0] = 1.0 - output[..., 0]
    elif kind != "noisy":
        raise AssertionError(kind)
    output, target = lo + (hi - lo) * output, lo + (hi - lo) * target
    return (np.clip(output, lo, hi).astype(np.float32),
            np.clip(target, lo, hi).astype(np.float32))


def _load_unit(path: Path) -> F32:
    with Image.open(path) as im:
        return (np.asarray(im.convert("RGB"), np.float32) / np.float32(255.0)).astype(np.float32)


@pytest.fixture(scope="module")
def hd_pair() -> tuple[F32, F32]:
    """Track A on div2k/HD_res/0.png: (bicubic x1/4 -> x4 / 255, target / 255)."""
    path = require_data("div2k", "HD_res", "0.png")
    with Image.open(path) as im:
        target = np.asarray(im.convert("RGB"), np.uint8)
    low = track_a_input_ref(target)
    return (low.astype(np.float32) / np.float32(255.0)).astype(np.float32), _load_unit(path)


def _real_crop(size: int = 256) -> tuple[F32, F32]:
    with Image.open(require_data("div2k", "HD_res", "1.png")) as im:
        target = np.asarray(im.convert("RGB"), np.uint8)[200 : 200 + size, 400 : 400 + size]
    low = track_a_input_ref(np.ascontiguousarray(target))
    return (low.astype(np.float32) / np.float32(255.0)).astype(np.float32), (
        target.astype(np.float32) / np.float32(255.0)
    ).astype(np.float32)


def _compat_pairs() -> list[Any]:
    """(name, loader) cases, loaded when the test runs: the real crop needs the data."""
    random = {"random 256x256": (31, 256, 256, "noisy", 0.08),
              "random 241x263": (32, 241, 263, "noisy", 0.2)}
    cases = [pytest.param(name, functools.partial(_pair, *args), id=name)
             for name, args in random.items()]
    return [*cases, pytest.param("DIV2K HD crop 256x256", _real_crop,
                                 id="DIV2K HD crop 256x256", marks=pytest.mark.slow)]


# --------------------------------------------------------------------------------------------
# the transcriptions against the official definitions (no service involved)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(161, 161), (200, 171), (233, 190)])
def test_transcription_tf_flavour_is_msssim_tf_ref(h: int, w: int) -> None:
    for kind in ("noisy", "inverted", "channel_inverted"):
        a, b = _pair(h * w, h, w, kind)
        _assert_close(_ms_ssim_def(a, b, "tf"), msssim_tf_ref(a, b), 1e-12, f"{kind} {h}x{w}")


@pytest.mark.parametrize(("h", "w"), [(100, 100), (37, 64), (11, 11), (171, 200)])
def test_transcription_numpy_flavour_is_msssim_numpy_ref(h: int, w: int) -> None:
    for kind in ("noisy", "inverted", "shifted"):
        a, b = _pair(h + w, h, w, kind, lo=-0.2, hi=1.2)
        want = msssim_numpy_ref(a[None] * 255.0, b[None] * 255.0, max_val=255)
        _assert_close(_ms_ssim_def(a, b, "numpy"), want, 1e-9, f"{kind} {h}x{w}")
        # (1e-9: FFT against direct sums.) Single scale: the official _SSIMForMultiScale ssim.
        ssim_off, _ = _ssim_for_multiscale(
            a[None].astype(np.float64) * 255.0, b[None].astype(np.float64) * 255.0, 255.0
        )
        _assert_close(_ssim_def(a, b, "numpy"), ssim_off, 1e-9, f"ssim {kind} {h}x{w}")


def test_transcription_tf_shrink_is_numpy_code_on_one_channel() -> None:
    """On one channel with positive terms, per-channel and pooled means coincide, so the tf
    flavour with the NumPy window shrink must equal the official NumPy code on a 100x100 image
    (the downsampling of both definitions is the same)."""
    a, b = _pair(41, 100, 100, "noisy", 0.05)
    a1, b1 = a[..., 1:2], b[..., 1:2]
    want = msssim_numpy_ref(a1[None] * 255.0, b1[None] * 255.0, max_val=255)
    _assert_close(_ms_ssim_def(a1, b1, "tf", shrink=True), want, 1e-9, "tf+shrink 1 channel")
    with pytest.raises(_TooSmall):
        _ms_ssim_def(a1, b1, "tf")


def test_transcription_tf_ssim_is_tensorflow() -> None:
    import tensorflow as tf

    a, b = _pair(42, 200, 230, "noisy", 0.1)
    want = float(tf.image.ssim(a[None], b[None], max_val=1.0)[0])
    _assert_close(_ssim_def(a, b, "tf"), want, 1e-5, "tf.image.ssim")


# --------------------------------------------------------------------------------------------
# Y channel (BT.601 luma, MATLAB rgb2ycbcr)
# --------------------------------------------------------------------------------------------


def test_luma_known_values() -> None:
    """White is Y = 235/255, black 16/255: their Y-PSNR is -20 log10(219/255)."""
    white = np.ones((20, 30, 3), np.float32)
    black = np.zeros((20, 30, 3), np.float32)
    np.testing.assert_allclose(_luma(white), 235.0 / 255.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_luma(black), 16.0 / 255.0, rtol=0, atol=1e-12)
    want = -20.0 * math.log10(219.0 / 255.0)
    _assert_close(psnr(white, black, channel="y"), want, PSNR_TOL, "Y-PSNR white/black")
    _assert_close(psnr(white, black, channel="rgb"), 0.0, PSNR_TOL, "RGB-PSNR white/black")
    assert psnr(white, white.copy(), channel="y") == math.inf


def test_y_channel_is_luma_and_not_rgb() -> None:
    """A pure chroma change (B up, R/G down with zero net luma) is invisible in Y only."""
    a, b = _pair(43, 170, 180, "noisy", 0.05, lo=0.2, hi=0.8)
    out = b.astype(np.float64).copy()
    delta = 0.05
    out[..., 2] += delta
    out[..., 0] -= delta * 24.966 / 65.481  # Y unchanged: 65.481 dR + 24.966 dB = 0
    out32 = out.astype(np.float32)
    assert psnr(out32, b, channel="y") > psnr(out32, b, channel="rgb") + 20.0
    for flavor in ("tf", "numpy"):
        rgb, y = ms_ssim(a, b, flavor=flavor), ms_ssim(a, b, flavor=flavor, channel="y")
        assert abs(rgb - y) > 1e-4, (flavor, rgb, y)


@pytest.mark.parametrize(("h", "w"), [(170, 180), (257, 161), (300, 333)])
def test_y_channel_matches_reference(h: int, w: int) -> None:
    a, b = _pair(h * 7 + w, h, w, "noisy", 0.1)
    ya, yb = _luma(a), _luma(b)
    _assert_close(psnr(a, b, channel="y"), psnr_ref(ya, yb, 1.0), PSNR_TOL, "Y-PSNR")
    _assert_close(
        ms_ssim(a, b, flavor="tf", channel="y"), msssim_tf_ref(ya, yb), SSIM_TOL, "tf Y MS-SSIM"
    )
    _assert_close(
        ms_ssim(a, b, flavor="numpy", channel="y"),
        msssim_numpy_ref(ya[None] * 255.0, yb[None] * 255.0, max_val=255),
        SSIM_TOL, "numpy Y MS-SSIM",
    )
    for flavor in ("tf", "numpy"):
        _assert_close(
            ssim(a, b, flavor=flavor, channel="y"), _ssim_def(ya, yb, flavor), SSIM_TOL,
            f"{flavor} Y SSIM",
        )


@pytest.mark.slow
def test_y_channel_on_real_hd_pair(hd_pair: tuple[F32, F32]) -> None:
    a, b = hd_pair
    ya, yb = _luma(a), _luma(b)
    _assert_close(psnr(a, b, channel="y"), psnr_ref(ya, yb, 1.0), PSNR_TOL, "HD Y-PSNR")
    _assert_close(
        ms_ssim(a, b, flavor="tf", channel="y"), msssim_tf_ref(ya, yb), SSIM_TOL, "HD Y MS-SSIM"
    )


@pytest.mark.slow
def test_y_channel_dped_patch_numpy_flavour() -> None:
    iphone = require_data("dped", "patches", "iphone", "0.jpg")
    a, b = _load_unit(iphone), _load_unit(require_data("dped", "patches", "canon", "0.jpg"))
    ya, yb = _luma(a), _luma(b)
    _assert_close(
        ms_ssim(a, b, flavor="numpy", channel="y"),
        msssim_numpy_ref(ya[None] * 255.0, yb[None] * 255.0, max_val=255),
        SSIM_TOL, "DPED 0 Y MS-SSIM",
    )


# --------------------------------------------------------------------------------------------
# single-scale SSIM
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w"), [(11, 11), (12, 31), (100, 100), (161, 200), (257, 128)]
)
@pytest.mark.parametrize("flavor", ["tf", "numpy"])
def test_ssim_matches_definition(flavor: str, h: int, w: int) -> None:
    for kind in ("noisy", "inverted", "constant"):
        a, b = _pair(h + 3 * w, h, w, kind, 0.1, lo=-0.1, hi=1.1)
        _assert_close(ssim(a, b, flavor=flavor), _ssim_def(a, b, flavor), SSIM_TOL,
                      f"{flavor} SSIM {kind} {h}x{w}")
    a, _ = _pair(h, h, w, "noisy", 0.1)
    assert ssim(a, a.copy(), flavor=flavor) == pytest.approx(1.0, abs=SSIM_TOL)


@pytest.mark.parametrize(("h", "w"), [(5, 7), (10, 40), (1, 1)])
def test_ssim_numpy_flavour_shrinks_window(h: int, w: int) -> None:
    a, b = _pair(h * w, h, w, "noisy", 0.1)
    _assert_close(ssim(a, b, flavor="numpy"), _ssim_def(a, b, "numpy"), SSIM_TOL,
                  f"numpy SSIM {h}x{w}")
    _assert_close(ssim(a, b, flavor="tf", small="shrink_window"),
                  _ssim_def(a, b, "tf", shrink=True), SSIM_TOL, f"tf+shrink SSIM {h}x{w}")


def test_ssim_max_val_255() -> None:
    a, b = _pair(44, 120, 130, "noisy", 0.1)
    a255, b255 = a * np.float32(255), b * np.float32(255)
    for flavor in ("tf", "numpy"):
        _assert_close(ssim(a255, b255, flavor=flavor, max_val=255.0),
                      _ssim_def(a255, b255, flavor, max_val=255.0), SSIM_TOL, f"{flavor} @255")


def test_ssim_flavours_agree_at_full_window_and_differ_from_ms_ssim() -> None:
    """With equal-sized channels, the mean of per-channel means is the pooled mean: the two
    single-scale flavours differ only where the window shrinks."""
    a, b = _pair(45, 190, 200, "noisy", 0.15)
    a[..., 0] = b[..., 0]  # channels of different quality
    tf_s, np_s = ssim(a, b, flavor="tf"), ssim(a, b, flavor="numpy")
    _assert_close(tf_s, np_s, SSIM_TOL, "tf vs numpy single-scale")
    _assert_close(tf_s, _ssim_def(a, b, "tf"), SSIM_TOL, "tf single-scale")
    assert abs(tf_s - ms_ssim(a, b, flavor="tf")) > 1e-3


# --------------------------------------------------------------------------------------------
# negative contrast terms
# --------------------------------------------------------------------------------------------


def test_negative_policies_inverted_image() -> None:
    a, b = _pair(46, 170, 175, "inverted", 0.05)
    assert msssim_tf_ref(a, b) == 0.0  # really negative terms
    for flavor in ("tf", "numpy"):
        relu = ms_ssim(a, b, flavor=flavor, negative="relu")
        _assert_close(relu, _ms_ssim_def(a, b, flavor, negative="relu"), SSIM_TOL, flavor)
        assert relu == pytest.approx(0.0, abs=SSIM_TOL)
        assert math.isnan(ms_ssim(a, b, flavor=flavor, negative="nan")), flavor
        with pytest.raises(InvalidArgument):
            ms_ssim(a, b, flavor=flavor, negative="error")
    assert ms_ssim(a, b, flavor="tf") == pytest.approx(0.0, abs=SSIM_TOL)  # default relu
    assert math.isnan(ms_ssim(a, b, flavor="numpy"))  # default nan


def test_negative_policies_one_channel_inverted_tf_flavour() -> None:
    """ReLU is per channel in the tf flavour: the inverted channel counts 0, the others keep
    their value; NaN in one channel makes the mean NaN."""
    a, b = _pair(47, 180, 190, "channel_inverted", 0.05)
    want = _ms_ssim_def(a, b, "tf", negative="relu")
    assert 0.3 < want < 2.0 / 3.0, want  # two good channels of three, one at 0
    _assert_close(ms_ssim(a, b, flavor="tf"), want, SSIM_TOL, "tf default")
    _assert_close(ms_ssim(a, b, flavor="tf", negative="relu"), want, SSIM_TOL, "tf relu")
    assert math.isnan(ms_ssim(a, b, flavor="tf", negative="nan"))
    with pytest.raises(InvalidArgument):
        ms_ssim(a, b, flavor="tf", negative="error")
    # The numpy flavour pools channels; whatever the sign, it must follow its definition.
    for negative in ("relu", "nan"):
        _assert_close(ms_ssim(a, b, flavor="numpy", negative=negative),
                      _ms_ssim_def(a, b, "numpy", negative=negative), SSIM_TOL,
                      f"numpy {negative}")


@pytest.mark.parametrize("flavor", ["tf", "numpy"])
def test_negative_error_policy_passes_positive_terms(flavor: str) -> None:
    a, b = _pair(48, 170, 200, "noisy", 0.1)
    default = ms_ssim(a, b, flavor=flavor)
    _assert_close(default, _ms_ssim_def(a, b, flavor), SSIM_TOL, flavor)
    for negative in ("error", "relu", "nan"):
        _assert_close(ms_ssim(a, b, flavor=flavor, negative=negative), default, 1e-12, negative)


# --------------------------------------------------------------------------------------------
# images too small for five scales of an 11x11 window
# --------------------------------------------------------------------------------------------


def test_tf_flavour_shrink_window_on_a_dped_sized_image() -> None:
    a, b = _pair(49, 100, 100, "noisy", 0.05)
    with pytest.raises(InvalidArgument):
        ms_ssim(a, b, flavor="tf")
    with pytest.raises(InvalidArgument):
        ms_ssim(a, b, flavor="tf", small="error")
    got = ms_ssim(a, b, flavor="tf", small="shrink_window")
    want = _ms_ssim_def(a, b, "tf", shrink=True)
    _assert_close(got, want, SSIM_TOL, "tf + shrink_window 100x100")
    # Per channel, so not the numpy flavour (which pools) on RGB:
    assert abs(want - ms_ssim(a, b, flavor="numpy")) > 1e-7


@pytest.mark.parametrize(("h", "w"), [(37, 23), (11, 11), (160, 300), (5, 90)])
def test_tf_flavour_shrink_window_odd_sizes(h: int, w: int) -> None:
    a, b = _pair(h * 31 + w, h, w, "noisy", 0.1)
    _assert_close(ms_ssim(a, b, flavor="tf", small="shrink_window"),
                  _ms_ssim_def(a, b, "tf", shrink=True), SSIM_TOL, f"tf+shrink {h}x{w}")


def test_shrink_window_is_a_no_op_on_large_images() -> None:
    a, b = _pair(50, 161, 170, "noisy", 0.1)
    for flavor in ("tf", "numpy"):
        _assert_close(ms_ssim(a, b, flavor=flavor, small="shrink_window"),
                      ms_ssim(a, b, flavor=flavor), 1e-12, flavor)
        _assert_close(ms_ssim(a, b, flavor=flavor, small="error"),
                      ms_ssim(a, b, flavor=flavor), 1e-12, flavor)


@pytest.mark.parametrize("shape", [(100, 100, 3), (160, 200, 3), (200, 160, 3)])
def test_numpy_flavour_small_error(shape: tuple[int, int, int]) -> None:
    a = np.random.default_rng(51).random(shape).astype(np.float32)
    b = np.random.default_rng(52).random(shape).astype(np.float32)
    with pytest.raises(InvalidArgument):
        ms_ssim(a, b, flavor="numpy", small="error")
    _assert_close(ms_ssim(a, b, flavor="numpy", small="shrink_window"),
                  _ms_ssim_def(a, b, "numpy"), SSIM_TOL, "numpy shrink")


def test_ssim_tf_flavour_too_small_for_the_window() -> None:
    a = np.random.default_rng(53).random((8, 40, 3)).astype(np.float32)
    with pytest.raises(InvalidArgument):
        ssim(a, a.copy(), flavor="tf")
    with pytest.raises(InvalidArgument):
        ssim(a, a.copy(), flavor="tf", small="error")


# --------------------------------------------------------------------------------------------
# tf_compat: TensorFlow's own float32 figures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "load"), _compat_pairs())
def test_tf_compat_is_tensorflow(name: str, load: Callable[[], tuple[F32, F32]]) -> None:
    import tensorflow as tf

    a, b = load()
    want_ms = float(tf.image.ssim_multiscale(a[None], b[None], max_val=1.0)[0])
    want_ss = float(tf.image.ssim(a[None], b[None], max_val=1.0)[0])
    want_psnr = float(tf.image.psnr(a[None], b[None], max_val=1.0)[0])
    _assert_close(ms_ssim(a, b, flavor="tf", tf_compat=True), want_ms, TF_COMPAT_TOL, name)
    _assert_close(ssim(a, b, flavor="tf", tf_compat=True), want_ss, TF_COMPAT_TOL, name)
    # float32 spacing at 30 dB is 1.9e-6: compare PSNR to 1e-6 relative.
    _assert_close(psnr(a, b, tf_compat=True), want_psnr, TF_COMPAT_TOL * abs(want_psnr), name)
    # and the exact values are within TF's float32 error of it at this size
    _assert_close(ms_ssim(a, b, flavor="tf"), want_ms, 1e-5, f"{name} exact vs TF")


def test_tf_compat_on_y_channel() -> None:
    import tensorflow as tf

    a, b = _pair(54, 200, 210, "noisy", 0.1)
    ya, yb = _luma(a).astype(np.float32)[None], _luma(b).astype(np.float32)[None]
    want = float(tf.image.ssim_multiscale(ya, yb, max_val=1.0)[0])
    _assert_close(ms_ssim(a, b, flavor="tf", channel="y", tf_compat=True), want,
                  TF_COMPAT_TOL, "Y tf_compat")


def test_tf_compat_only_for_tf_flavour() -> None:
    a, b = _pair(55, 170, 170, "noisy", 0.1)
    with pytest.raises(InvalidArgument):
        ms_ssim(a, b, flavor="numpy", tf_compat=True)


@pytest.mark.slow
def test_tf_compat_on_hd_pair_differs_from_exact_by_less_than_1e_3(
    hd_pair: tuple[F32, F32],
) -> None:
    """SPEC section 2: 0.9681899 (TensorFlow) against 0.9681561 (exact) on an HD pair."""
    a, b = hd_pair
    exact = msssim_tf_ref(a, b)
    compat = ms_ssim(a, b, flavor="tf", tf_compat=True)
    ours = ms_ssim(a, b, flavor="tf")
    _assert_close(ours, exact, SSIM_TOL, "HD exact")
    assert abs(compat - exact) < 1e-3, (compat, exact)
    assert compat != ours, "tf_compat must return TensorFlow's own (float32) figure"


# --------------------------------------------------------------------------------------------
# property-based: the fast kernels against the definitions
# --------------------------------------------------------------------------------------------

SEEDS = st.integers(0, 2**32 - 1)
KINDS = st.sampled_from(["noisy", "noisy", "noisy", "constant", "shifted", "inverted",
                         "channel_inverted"])
NOISE = st.floats(0.0, 0.5, allow_nan=False)
SIDES = st.one_of(st.integers(5, 160), st.integers(161, 400))
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@settings(SETTINGS, max_examples=80)
@given(
    h=SIDES, w=SIDES, seed=SEEDS, kind=KINDS, noise=NOISE,
    flavor=st.sampled_from(["tf", "numpy"]), channel=st.sampled_from(["rgb", "y"]),
    negative=st.sampled_from([None, "relu", "nan", "error"]),
    small=st.sampled_from([None, "error", "shrink_window"]),
    unclipped=st.booleans(),
)
def test_random_ms_ssim_options(
    h: int, w: int, seed: int, kind: str, noise: float, flavor: str, channel: str,
    negative: str | None, small: str | None, unclipped: bool,
) -> None:
    a, b = _pair(seed, h, w, kind, noise, *((-0.3, 1.3) if unclipped else (0.0, 1.0)))
    shrink = {None: flavor == "numpy", "error": False, "shrink_window": True}[small]
    xa, xb = (_luma(a), _luma(b)) if channel == "y" else (a, b)
    what = f"{flavor} {channel} {kind} {h}x{w} noise {noise} negative {negative} small {small}"
    try:
        want: float | None = _ms_ssim_def(xa, xb, flavor, negative=negative, shrink=shrink)
    except (_TooSmall, _NegativeTerm):
        want = None
    if want is None:
        with pytest.raises(InvalidArgument):
            ms_ssim(a, b, flavor=flavor, channel=channel, negative=negative, small=small)
        return
    got = ms_ssim(a, b, flavor=flavor, channel=channel, negative=negative, small=small)
    _assert_close(got, want, SSIM_TOL, what)


@pytest.mark.slow
@settings(SETTINGS, max_examples=60)
@given(
    h=SIDES, w=SIDES, seed=SEEDS, kind=KINDS, noise=NOISE,
    flavor=st.sampled_from(["tf", "numpy"]), channel=st.sampled_from(["rgb", "y"]),
    shrink_tf=st.booleans(),
)
def test_random_ssim_and_psnr(
    h: int, w: int, seed: int, kind: str, noise: float, flavor: str, channel: str,
    shrink_tf: bool,
) -> None:
    a, b = _pair(seed, h, w, kind, noise)
    xa, xb = (_luma(a), _luma(b)) if channel == "y" else (a, b)
    small = "shrink_window" if (flavor == "tf" and shrink_tf) else None
    what = f"{flavor} {channel} SSIM {kind} {h}x{w} noise {noise} small {small}"
    try:
        want: float | None = _ssim_def(xa, xb, flavor, shrink=(flavor == "numpy" or shrink_tf))
    except _TooSmall:  # the tf flavour without shrink on a side < 11, as tf.image.ssim
        want = None
    if want is None:
        with pytest.raises(InvalidArgument):
            ssim(a, b, flavor=flavor, channel=channel, small=small)
    else:
        _assert_close(ssim(a, b, flavor=flavor, channel=channel, small=small), want, SSIM_TOL,
                      what)
    _assert_close(psnr(a, b, channel=channel), psnr_ref(xa, xb, 1.0), PSNR_TOL,
                  f"{channel} PSNR {kind} {h}x{w}")


@pytest.mark.slow
@settings(SETTINGS, max_examples=30)
@given(h=st.integers(161, 400), w=st.integers(161, 400), seed=SEEDS, kind=KINDS,
       noise=NOISE)
def test_random_tf_flavour_against_msssim_tf_ref(
    h: int, w: int, seed: int, kind: str, noise: float,
) -> None:
    """The default tf flavour against tests/reference.py directly (not the transcription)."""
    a, b = _pair(seed, h, w, kind, noise)
    _assert_close(ms_ssim(a, b, flavor="tf"), msssim_tf_ref(a, b), SSIM_TOL,
                  f"tf {kind} {h}x{w} noise {noise}")


@pytest.mark.slow
def test_large_random_pair_tf_flavour() -> None:
    """A DIV2K-sized 2040x1356 pair: float32 sums would be off by ~5e-4 here."""
    a, b = _pair(56, 1356, 2040, "noisy", 0.05)
    _assert_close(ms_ssim(a, b, flavor="tf"), msssim_tf_ref(a, b), SSIM_TOL, "2040x1356 tf")
    _assert_close(psnr(a, b), psnr_ref(a, b), PSNR_TOL, "2040x1356 PSNR")
