"""Reference implementations of the PIRM 2018 evaluation metrics, the tests' source of truth.

Plain float64 transcriptions of the official definitions (SPEC section 2), written for clarity
and independently of `services.metrics`; speed is not a goal. Every function takes plain NumPy
arrays and returns plain Python floats (or a uint8 image).

* `psnr_ref`          -- `tf.image.psnr`.
* `msssim_tf_ref`     -- `tf.image.ssim_multiscale` (per channel, ReLU, >= 161 px sides).
* `msssim_numpy_ref`  -- the NumPy `MultiScaleSSIM` of tensorflow/models
                         research/compression/image_encoder/msssim.py (channels pooled, window
                         shrinks on small images, no ReLU).
* `track_a_input_ref` -- track A's bicubic x1/4 then x4 low-resolution input (PIL, uint8).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image
from scipy import ndimage, signal

F64 = NDArray[np.float64]

MSSSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1 = 0.01
K2 = 0.03
FILTER_SIZE = 11
FILTER_SIGMA = 1.5


def _as_hwc(img: ArrayLike) -> F64:
    """An HxWxC (or 1xHxWxC) array as float64 HxWxC."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"batch of {a.shape[0]} images; the references take one")
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"expected HxWxC or 1xHxWxC, got shape {a.shape}")
    return a


# --------------------------------------------------------------------------------------------
# PSNR (tf.image.psnr)
# --------------------------------------------------------------------------------------------


def psnr_ref(a: ArrayLike, b: ArrayLike, max_val: float = 1.0) -> float:
    """tf.image.psnr: 20 log10(max) - 10 log10(MSE), MSE over all pixels and channels."""
    x = _as_hwc(a)
    y = _as_hwc(b)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 20.0 * math.log10(max_val) - 10.0 * math.log10(mse)


# --------------------------------------------------------------------------------------------
# MS-SSIM, TensorFlow's definition (tf.image.ssim_multiscale)
# --------------------------------------------------------------------------------------------


def tf_gaussian_window(size: int = FILTER_SIZE, sigma: float = FILTER_SIGMA) -> F64:
    """TF's _fspecial_gauss: softmax over the size*size grid of -0.5 (x^2 + y^2) / sigma^2."""
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = coords**2 * (-0.5 / sigma**2)
    logits = g[np.newaxis, :] + g[:, np.newaxis]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _correlate_valid(img: F64, window: F64) -> F64:
    """Direct 2-D 'valid' correlation of each channel of HxWxC `img` with a kxk window.

    An explicit sum over all k*k taps (no separable split, no FFT): out[i, j] =
    sum_{u, v} window[u, v] * img[i + u, j + v].

    Output rows are computed in strips only so that the working set stays in cache; each output
    value is the same 121-term sum either way."""
    k = window.shape[0]
    h, w = img.shape[0] - k + 1, img.shape[1] - k + 1
    out = np.zeros((h, w) + img.shape[2:], dtype=np.float64)
    strip = 16
    for r0 in range(0, h, strip):
        r1 = min(r0 + strip, h)
        acc = out[r0:r1]
        for u in range(k):
            for v in range(k):
                acc += window[u, v] * img[r0 + u : r1 + u, v : v + w]
    return out


def _tf_ssim_per_channel(x: F64, y: F64, max_val: float) -> tuple[F64, F64]:
    """TF's _ssim_per_channel / _ssim_helper: (mean ssim, mean cs) per channel, shape (C,)."""
    window = tf_gaussian_window()
    c1 = (K1 * max_val) ** 2
    c2 = (K2 * max_val) ** 2
    mean0 = _correlate_valid(x, window)
    mean1 = _correlate_valid(y, window)
    num0 = mean0 * mean1 * 2.0
    den0 = mean0**2 + mean1**2
    luminance = (num0 + c1) / (den0 + c1)
    num1 = _correlate_valid(x * y, window) * 2.0
    den1 = _correlate_valid(x**2 + y**2, window)
    cs = (num1 - num0 + c2) / (den1 - den0 + c2)  # compensation = 1.0
    ssim = np.mean(luminance * cs, axis=(0, 1))
    return ssim, np.mean(cs, axis=(0, 1))


def _tf_downscale(img: F64) -> F64:
    """TF's MS-SSIM downscale: SYMMETRIC pad of one row/column at the bottom/right of odd
    sides, then 2x2 average pooling with stride 2 ('VALID')."""
    pad_h = img.shape[0] % 2
    pad_w = img.shape[1] % 2
    if pad_h or pad_w:
        img = np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
    return (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2]) / 4.0


def msssim_tf_ref(a: ArrayLike, b: ArrayLike, max_val: float = 1.0) -> float:
    """tf.image.ssim_multiscale(a, b, max_val) evaluated in float64.

    Per channel: product over five scales of relu(cs_k)^w_k (k < 4) times relu(ssim_4)^w_4;
    then the mean over channels. Both sides must be >= 161 px (the 11-tap window must fit the
    fifth scale)."""
    x = _as_hwc(a)
    y = _as_hwc(b)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    if min(x.shape[0], x.shape[1]) < 161:
        raise ValueError(f"tf MS-SSIM needs sides >= 161, got {x.shape[:2]}")
    levels = len(MSSSIM_WEIGHTS)
    per_channel = np.ones(x.shape[2], dtype=np.float64)
    for k, weight in enumerate(MSSSIM_WEIGHTS):
        if k > 0:
            x = _tf_downscale(x)
            y = _tf_downscale(y)
        ssim, cs = _tf_ssim_per_channel(x, y, max_val)
        term = ssim if k == levels - 1 else cs
        per_channel *= np.maximum(term, 0.0) ** weight
    return float(np.mean(per_channel))


# --------------------------------------------------------------------------------------------
# MS-SSIM, the official NumPy "MultiScaleSSIM" (tensorflow/models, image_encoder/msssim.py)
# --------------------------------------------------------------------------------------------


def _fspecial_gauss(size: int, sigma: float) -> F64:
    """msssim.py's _FSpecialGauss (MATLAB fspecial('gaussian'))."""
    radius = size // 2
    offset = 0.0
    start, stop = -radius, radius + 1
    if size % 2 == 0:
        offset = 0.5
        stop -= 1
    x, y = np.mgrid[offset + start : stop, offset + start : stop]
    assert len(x) == size
    g = np.exp(-((x**2 + y**2) / (2.0 * sigma**2)))
    return np.asarray(g / g.sum(), dtype=np.float64)


def _ssim_for_multiscale(
    img1: F64, img2: F64, max_val: float, filter_size: int = FILTER_SIZE,
    filter_sigma: float = FILTER_SIGMA,
) -> tuple[float, float]:
    """msssim.py's _SSIMForMultiScale on 1xHxWxC float64 arrays: (mean ssim, mean cs), the
    means taken over all positions AND channels."""
    _, height, width, _ = img1.shape
    size = min(filter_size, height, width)
    sigma = size * filter_sigma / filter_size
    window = np.reshape(_fspecial_gauss(size, sigma), (1, size, size, 1))
    mu1 = signal.fftconvolve(img1, window, mode="valid")
    mu2 = signal.fftconvolve(img2, window, mode="valid")
    sigma11 = signal.fftconvolve(img1 * img1, window, mode="valid")
    sigma22 = signal.fftconvolve(img2 * img2, window, mode="valid")
    sigma12 = signal.fftconvolve(img1 * img2, window, mode="valid")
    mu11 = mu1 * mu1
    mu22 = mu2 * mu2
    mu12 = mu1 * mu2
    sigma11 -= mu11
    sigma22 -= mu22
    sigma12 -= mu12
    c1 = (K1 * max_val) ** 2
    c2 = (K2 * max_val) ** 2
    v1 = 2.0 * sigma12 + c2
    v2 = sigma11 + sigma22 + c2
    ssim = float(np.mean(((2.0 * mu12 + c1) * v1) / ((mu11 + mu22 + c1) * v2)))
    cs = float(np.mean(v1 / v2))
    return ssim, cs


def msssim_numpy_ref(img1: ArrayLike, img2: ArrayLike, max_val: float = 255) -> float:
    """msssim.py's MultiScaleSSIM(img1, img2, max_val): inputs 1xHxWxC (or HxWxC) in the
    0..max_val scale. A negative cs or ssim term gives NaN, as in the original."""
    im1 = np.asarray(img1, dtype=np.float64)
    im2 = np.asarray(img2, dtype=np.float64)
    if im1.ndim == 3:
        im1 = im1[np.newaxis]
        im2 = im2[np.newaxis]
    if im1.shape != im2.shape:
        raise ValueError(f"shape mismatch {im1.shape} vs {im2.shape}")
    if im1.ndim != 4:
        raise ValueError(f"expected 4-D arrays, got {im1.ndim}-D")
    weights = np.array(MSSSIM_WEIGHTS)
    levels = weights.size
    downsample_filter = np.ones((1, 2, 2, 1)) / 4.0
    mssim: list[float] = []
    mcs: list[float] = []
    for _ in range(levels):
        ssim, cs = _ssim_for_multiscale(im1, im2, max_val)
        mssim.append(ssim)
        mcs.append(cs)
        filtered = [ndimage.convolve(im, downsample_filter, mode="reflect") for im in (im1, im2)]
        im1, im2 = (f[:, ::2, ::2, :] for f in filtered)
    with np.errstate(invalid="ignore"):
        value = np.prod(np.array(mcs[: levels - 1]) ** weights[: levels - 1]) * (
            mssim[levels - 1] ** weights[levels - 1]
        )
    return float(value)


# --------------------------------------------------------------------------------------------
# Track A input
# --------------------------------------------------------------------------------------------


def track_a_input_ref(target_uint8: ArrayLike) -> NDArray[np.uint8]:
    """SPEC section 2, track A step 1: crop (top-left) to multiples of 4, PIL BICUBIC resize to
    1/4, then BICUBIC x4 back; uint8 throughout. Returns the uint8 HxWx3 model input (whose
    size is the cropped target's)."""
    t = np.asarray(target_uint8)
    if t.dtype != np.uint8 or t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {t.dtype} {t.shape}")
    h, w = (t.shape[0] // 4) * 4, (t.shape[1] // 4) * 4
    if h == 0 or w == 0:
        raise ValueError(f"image {t.shape[:2]} too small for x4")
    cropped = np.ascontiguousarray(t[:h, :w])
    small = Image.fromarray(cropped).resize((w // 4, h // 4), Image.Resampling.BICUBIC)
    back = small.resize((w, h), Image.Resampling.BICUBIC)
    out = np.asarray(back, dtype=np.uint8)
    assert out.shape == (h, w, 3)
    return out
