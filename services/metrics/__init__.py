"""The metrics service and its Python API: exact PSNR and MS-SSIM on NumPy arrays."""

from services.metrics.quality import (
    Flavor,
    PairQuality,
    QualityOptions,
    evaluate_pair,
    ms_ssim,
    psnr,
)

__all__ = ["Flavor", "PairQuality", "QualityOptions", "evaluate_pair", "ms_ssim", "psnr"]
