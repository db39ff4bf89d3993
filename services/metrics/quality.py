"""PSNR and MS-SSIM as the challenge defines them (SPEC.md section 2), evaluated in float64.

TensorFlow computes these in float32 and biases MS-SSIM by up to 5e-4 on DIV2K-sized images, so
the figures here are the definitions themselves: every filter, product and mean in float64.

Two MS-SSIM flavours exist:
- `tf`: tf.image.ssim_multiscale. Per channel, 11x11 Gaussian 'valid' filter, negative terms
  clamped at 0, both sides >= 161 px so that the fifth scale still holds the filter.
- `numpy`: MultiScaleSSIM of the TensorFlow compression models. Channels pooled, the window
  shrinks to the image at coarse scales (with its sigma), no clamping (a negative contrast
  term gives NaN).
Both downsample between scales by a 2x2 mean, repeating the last row/column of an odd side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from services.common.errors import InvalidArgument

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
FILTER_SIZE = 11
FILTER_SIGMA = 1.5
K1 = 0.01
K2 = 0.03


class Flavor(StrEnum):
    TF = "tf"
    NUMPY = "numpy"


def psnr(output: np.ndarray, target: np.ndarray, max_val: float = 1.0) -> float:
    """tf.image.psnr's definition: MSE over all pixels and channels; +inf for identical images."""
    a, b = _as_pair(output, target)
    mse = float(np.mean(np.square(a - b)))
    if mse == 0.0:
        return math.inf
    return 20.0 * math.log10(max_val) - 10.0 * math.log10(mse)


def ms_ssim(
    output: np.ndarray,
    target: np.ndarray,
    flavor: Flavor | str = Flavor.TF,
    max_val: float = 1.0,
) -> float:
    """Multi-scale SSIM of two HxWxC images with the challenge's five weights."""
    a, b = _as_pair(output, target)
    flavor = Flavor(flavor)
    if flavor is Flavor.TF:
        return _ms_ssim_tf(a, b, max_val)
    return _ms_ssim_numpy(a, b, max_val)


def gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product is the 2-D window of both flavours."""
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _ms_ssim_tf(a: np.ndarray, b: np.ndarray, max_val: float) -> float:
    smallest = FILTER_SIZE * 2 ** (len(MSSSIM_WEIGHTS) - 1) - 2 ** (len(MSSSIM_WEIGHTS) - 1) + 1
    if min(a.shape[:2]) < smallest:
        raise InvalidArgument(
            f"MS-SSIM (tf flavour) needs both image sides >= {smallest} px for five scales "
            f"of an {FILTER_SIZE}x{FILTER_SIZE} filter; got {a.shape[0]}x{a.shape[1]}. "
            "Use the numpy flavour for small images."
        )
    window = gaussian_1d(FILTER_SIZE, FILTER_SIGMA)
    terms = []
    for scale in range(len(MSSSIM_WEIGHTS)):
        if scale:
            a, b = _downsample(a), _downsample(b)
        ssim, cs = _ssim_terms(a, b, window, max_val, axes=(0, 1))
        terms.append(cs if scale < len(MSSSIM_WEIGHTS) - 1 else ssim)
    per_channel = np.prod(
        [np.maximum(t, 0.0) ** w for t, w in zip(terms, MSSSIM_WEIGHTS, strict=True)], axis=0
    )
    return float(np.mean(per_channel))


def _ms_ssim_numpy(a: np.ndarray, b: np.ndarray, max_val: float) -> float:
    terms = []
    for scale in range(len(MSSSIM_WEIGHTS)):
        if scale:
            a, b = _downsample(a), _downsample(b)
        size = min(FILTER_SIZE, a.shape[0], a.shape[1])
        window = gaussian_1d(size, size * FILTER_SIGMA / FILTER_SIZE)
        ssim, cs = _ssim_terms(a, b, window, max_val, axes=None)
        terms.append(cs if scale < len(MSSSIM_WEIGHTS) - 1 else ssim)
    with np.errstate(invalid="ignore"):  # a negative term gives NaN, as in the official code
        return float(np.prod([t**w for t, w in zip(terms, MSSSIM_WEIGHTS, strict=True)]))


def _ssim_terms(
    a: np.ndarray, b: np.ndarray, window: np.ndarray, max_val: float, axes: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean contrast-structure term over the 'valid' area (per channel if axes)."""
    c1 = (K1 * max_val) ** 2
    c2 = (K2 * max_val) ** 2
    mu_a = _filter_valid(a, window)
    mu_b = _filter_valid(b, window)
    mean_ab = _filter_valid(a * b, window)
    mean_sq = _filter_valid(a * a + b * b, window)
    mu_ab = mu_a * mu_b
    mu_sq = mu_a * mu_a + mu_b * mu_b
    luminance = (2.0 * mu_ab + c1) / (mu_sq + c1)
    cs = (2.0 * (mean_ab - mu_ab) + c2) / (mean_sq - mu_sq + c2)
    return np.mean(luminance * cs, axis=axes), np.mean(cs, axis=axes)


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of an HxWxC image by outer(window, window)."""
    n = len(window)
    h = image.shape[0] - n + 1
    rows = window[0] * image[:h]
    for k in range(1, n):
        rows += window[k] * image[k : k + h]
    w = image.shape[1] - n + 1
    out = window[0] * rows[:, :w]
    for k in range(1, n):
        out += window[k] * rows[:, k : k + w]
    return out


def _downsample(image: np.ndarray) -> np.ndarray:
    """2x2 mean, an odd side first extended by repeating its last row or column."""
    if image.shape[0] % 2:
        image = np.concatenate([image, image[-1:]], axis=0)
    if image.shape[1] % 2:
        image = np.concatenate([image, image[:, -1:]], axis=1)
    return (image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2]) / 4.0


def _as_pair(output: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = _as_image(output, "output")
    b = _as_image(target, "target")
    if a.shape != b.shape:
        raise InvalidArgument(
            f"output and target differ in shape: {a.shape} vs {b.shape}; "
            "the model must return an image of its input's size"
        )
    return a, b


def _as_image(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidArgument(f"{what} must be an HxWxC or 1xHxWxC image, got shape {x.shape}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise InvalidArgument(f"{what} contains NaN or Inf values")
    return x


@dataclass(frozen=True)
class QualityOptions:
    """How a pair is prepared before measuring: the track protocols of SPEC.md section 2."""

    crop_border: int = 0
    clip_psnr_input: bool = True
    clip_msssim_input: bool = True
    flavor: Flavor = Flavor.TF


@dataclass(frozen=True)
class PairQuality:
    psnr: float
    msssim: float


def evaluate_pair(output: np.ndarray, target: np.ndarray, options: QualityOptions) -> PairQuality:
    """Crop, clip and measure one (output, target) pair."""
    a, b = _as_pair(output, target)
    border = options.crop_border
    if border:
        if min(a.shape[:2]) <= 2 * border:
            raise InvalidArgument(
                f"a {border}-pixel border crop leaves nothing of a {a.shape[0]}x{a.shape[1]} image"
            )
        a = a[border:-border, border:-border]
        b = b[border:-border, border:-border]
    clipped_a, clipped_b = np.clip(a, 0.0, 1.0), np.clip(b, 0.0, 1.0)
    psnr_pair = (clipped_a, clipped_b) if options.clip_psnr_input else (a, b)
    ssim_pair = (clipped_a, clipped_b) if options.clip_msssim_input else (a, b)
    return PairQuality(
        psnr=psnr(psnr_pair[0], psnr_pair[1]),
        msssim=ms_ssim(ssim_pair[0], ssim_pair[1], flavor=options.flavor),
    )
