"""The metrics service and its Python API: exact PSNR, SSIM and MS-SSIM on NumPy arrays."""

from services.core.quality import (
    Channel,
    Flavor,
    NegativePolicy,
    PairQuality,
    QualityOptions,
    SmallPolicy,
)
from services.metrics.quality import evaluate_batch, evaluate_pair, ms_ssim, psnr, ssim

__all__ = [
    "Channel", "Flavor", "NegativePolicy", "PairQuality", "QualityOptions", "SmallPolicy",
    "evaluate_batch", "evaluate_pair", "ms_ssim", "psnr", "ssim",
]
