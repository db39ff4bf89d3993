"""Quality records: how a pair of images is measured (the track protocols of SPEC.md section 2
and the variants papers report) and what was measured. The metrics themselves are the metrics
service's (services/metrics/quality.py)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Flavor(StrEnum):
    TF = "tf"
    NUMPY = "numpy"


class Channel(StrEnum):
    RGB = "rgb"
    Y = "y"


class NegativePolicy(StrEnum):
    RELU = "relu"  # tf.image.ssim_multiscale: clamp at 0
    NAN = "nan"  # the NumPy code: a negative base to a fractional power is NaN
    ERROR = "error"


class SmallPolicy(StrEnum):
    ERROR = "error"  # tf: every scale must hold the 11x11 filter
    SHRINK_WINDOW = "shrink_window"  # numpy: the window shrinks to the image, sigma with it


@dataclass(frozen=True)
class QualityOptions:
    """How a pair is prepared and measured: the track protocols of SPEC.md section 2, plus the
    variants papers report."""

    crop_border: int = 0
    clip_psnr_input: bool = True
    clip_msssim_input: bool = True
    flavor: Flavor = Flavor.TF
    channel: Channel = Channel.RGB
    negative: NegativePolicy | None = None  # None: the flavour's own habit
    small: SmallPolicy | None = None
    tf_compat: bool = False
    with_ssim: bool = False  # also single-scale SSIM (on the MS-SSIM input)


@dataclass(frozen=True)
class PairQuality:
    psnr: float
    msssim: float
    ssim: float | None = None
