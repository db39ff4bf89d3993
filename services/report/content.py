"""What a report shows, as plain data (no gRPC): the leaderboard rows, each shown job's
per-image figures, and crops of its best and worst images."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BoardRow:
    """One team's entry, with the columns of the challenge's published tables."""

    rank: int
    team: str
    model_name: str
    job_id: str
    psnr: float
    msssim: float
    mos: float | None
    runtime_ms: float
    baseline_runtime_ms: float
    device: str
    peak_memory_mb: float
    score_a: float
    score_b: float
    score_c: float
    timing_flag: str = ""  # why its timing is not trusted (--timing-check flag), if it is not
    baseline: bool = False  # a baseline's row, ranked among the teams as the paper's tables do

    @property
    def on_gpu(self) -> bool:
        return self.device.upper().startswith("GPU")


@dataclass(frozen=True)
class ImageFigures:
    image: str
    psnr: float
    msssim: float


@dataclass(frozen=True)
class JobImages:
    """The per-image figures of one job, labelled for the distribution plot."""

    job_id: str
    label: str
    figures: list[ImageFigures]


@dataclass(frozen=True)
class CropSet:
    """Input, output and target crops of one image (PNG bytes) and why it is shown."""

    why: str  # "best" | "worst"
    figures: ImageFigures
    input_png: bytes
    output_png: bytes
    target_png: bytes


@dataclass
class ReportContent:
    title: str
    track: str
    phase: str
    rows: list[BoardRow]
    psnr_base: float  # SPEC section 3: the baseline's reference PSNR of the track
    focus_job: str = ""  # the job the report is about (highlighted), if any
    job: dict[str, Any] = field(default_factory=dict)  # its `job_summary`, if any
    images: list[JobImages] = field(default_factory=list)
    crops: list[CropSet] = field(default_factory=list)
    crops_job: str = ""
    crops_note: str = ""  # why there are no crops, when they could not be made
    notes: list[str] = field(default_factory=list)  # what the phase keeps from the reader, why

    @property
    def baseline_runtime_ms(self) -> float | None:
        """The SRCNN baseline's runtime: the median over the entries' own measurements (each
        was timed beside its model, on the same node)."""
        runtimes = sorted(r.baseline_runtime_ms for r in self.rows if r.baseline_runtime_ms > 0)
        if not runtimes:
            return None
        middle = len(runtimes) // 2
        return (runtimes[middle] if len(runtimes) % 2
                else (runtimes[middle - 1] + runtimes[middle]) / 2)


def best_and_worst(figures: list[ImageFigures]) -> list[tuple[str, ImageFigures]]:
    """The images with the highest and the lowest PSNR (one image: shown once, as best)."""
    ranked = sorted((f for f in figures if not math.isnan(f.psnr)),
                    key=lambda f: f.psnr, reverse=True)
    if not ranked:
        return []
    if len(ranked) == 1:
        return [("best", ranked[0])]
    return [("best", ranked[0]), ("worst", ranked[-1])]
