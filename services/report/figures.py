"""The report's figures as PNG bytes, drawn by matplotlib's Agg renderer.

Figures are made as `Figure` objects, not through pyplot: no global state, no GUI backend, so
this works on a server without a display and from several threads."""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from services.report.content import ReportContent
from services.report.pareto import pareto_front

FRONT_COLOUR, FOCUS_COLOUR, BASELINE_COLOUR = "#c0392b", "#2471a3", "#7d3c98"


def runtime_scatter(content: ReportContent) -> bytes:
    """PSNR against runtime (log scale) for every entry, the Pareto front joined by a line, the
    SRCNN baseline as a star at the track's reference PSNR and its median runtime."""
    figure = Figure(figsize=(7.5, 4.5), dpi=110)
    axes = figure.subplots()
    rows = [r for r in content.rows if math.isfinite(r.psnr) and r.runtime_ms > 0]
    axes.scatter([r.runtime_ms for r in rows], [r.psnr for r in rows], color="#7f8c8d",
                 zorder=2, label="entries")
    front = [rows[i] for i in pareto_front([(r.runtime_ms, r.psnr) for r in rows])]
    if front:
        axes.plot([r.runtime_ms for r in front], [r.psnr for r in front], "o-",
                  color=FRONT_COLOUR, zorder=3, label="Pareto front")
    for r in rows:
        axes.annotate(r.team, (r.runtime_ms, r.psnr), textcoords="offset points",
                      xytext=(5, 4), fontsize=8)
        if r.job_id == content.focus_job:
            axes.scatter([r.runtime_ms], [r.psnr], s=160, facecolors="none",
                         edgecolors=FOCUS_COLOUR, linewidths=2, zorder=4, label="this job")
    baseline = content.baseline_runtime_ms
    if baseline is not None:
        axes.scatter([baseline], [content.psnr_base], marker="*", s=220, color=BASELINE_COLOUR,
                     zorder=5, label=f"SRCNN baseline ({content.psnr_base:g} dB reference)")
    axes.set_xscale("log")
    axes.set_xlabel("runtime on an HD image (ms, log scale)")
    axes.set_ylabel("PSNR (dB)")
    axes.set_title(f"Track {content.track}: fidelity against speed")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    return _png(figure)


def image_distributions(content: ReportContent) -> bytes:
    """Per-image PSNR and MS-SSIM of each shown job: a box per job, every image as a dot."""
    jobs = [j for j in content.images if j.figures]
    figure = Figure(figsize=(max(7.5, 1.2 * len(jobs) + 4), 4.0), dpi=110)
    psnr_axes, msssim_axes = figure.subplots(1, 2)
    for axes, metric, label in ((psnr_axes, "psnr", "PSNR (dB)"),
                                (msssim_axes, "msssim", "MS-SSIM")):
        values = [[getattr(f, metric) for f in j.figures
                   if math.isfinite(getattr(f, metric))] for j in jobs]
        if any(values):
            axes.boxplot(values, showfliers=False)
            for position, column in enumerate(values, start=1):
                spread = [position + 0.12 * ((k % 7) - 3) / 3 for k in range(len(column))]
                axes.scatter(spread, column, s=10, alpha=0.6, color=FOCUS_COLOUR, zorder=3)
            axes.set_xticks(range(1, len(jobs) + 1), [j.label[:14] for j in jobs],
                            rotation=30, ha="right", fontsize=8)
        axes.set_ylabel(label)
        axes.set_title(f"{label} per image")
        axes.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
