"""Writes a report as one HTML file (CSS inside) with its PNG figures beside it: a folder that
opens offline, with no network resource. Every name in it comes from a stranger (team, model,
image names) and is escaped."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from services.client import ratio_text
from services.report.content import BoardRow, ReportContent
from services.report.figures import image_distributions, runtime_scatter

REPORT_FILE = "report.html"

CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table.board { border-collapse: collapse; font-size: 0.9em; }
table.board th, table.board td { padding: 4px 8px; border-bottom: 1px solid #ddd; }
table.board th { background: #f2f2f2; text-align: center; }
table.board td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.board tr.focus td { background: #fff6d5; font-weight: bold; }
.note { color: #666; font-size: 0.85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
.crops { display: flex; gap: 12px; align-items: flex-start; }
.crops figure { margin: 0; text-align: center; font-size: 0.85em; }
.crops img { width: 256px; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }
"""

COLUMNS = ("#", "team", "model", "PSNR", "MS-SSIM", "MOS", "CPU ms", "GPU ms", "RAM MB",
           "baseline ms", "score A", "score B", "score C")


def write_report(content: ReportContent, out_dir: Path) -> list[Path]:
    """Writes report.html and its figures into out_dir; returns the files, the HTML first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"runtime.png": runtime_scatter(content)}
    if any(j.figures for j in content.images):
        files["images.png"] = image_distributions(content)
    for crop in content.crops:
        for part, data in (("input", crop.input_png), ("output", crop.output_png),
                           ("target", crop.target_png)):
            files[f"crop-{crop.why}-{part}.png"] = data
    written = []
    for name, data in files.items():
        (out_dir / name).write_bytes(data)
        written.append(out_dir / name)
    html = out_dir / REPORT_FILE
    html.write_text(render_html(content, set(files)), encoding="utf-8")
    return [html, *written]


def render_html(content: ReportContent, figures: set[str]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(content.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(content.title)}</h1>",
        f'<p class="note">PIRM 2018 track {escape(content.track)}, {escape(content.phase)} '
        "phase. Figures as defined in SPEC.md: PSNR and MS-SSIM are means over the images; "
        "runtimes are medians on an HD (1280x720) image, the baseline timed on the same node."
        "</p>",
    ]
    parts += [f'<p class="note">{escape(note)}</p>' for note in content.notes]
    if content.job:
        parts.append(_job_section(content.job))
    parts += ["<h2>Leaderboard</h2>", _board_table(content.rows, content.focus_job)]
    parts += ["<h2>Fidelity against speed</h2>",
              _figure("runtime.png", "PSNR against runtime with the Pareto front and the "
                      "SRCNN baseline")]
    if "images.png" in figures:
        parts += ["<h2>Per-image PSNR and MS-SSIM</h2>",
                  _figure("images.png", "PSNR and MS-SSIM of each image, per job")]
    if content.crops:
        parts.append(f"<h2>Best and worst images of job {escape(content.crops_job)}</h2>")
        parts += [_crop_row(crop.why, crop.figures.image, crop.figures.psnr,
                            crop.figures.msssim) for crop in content.crops]
    elif content.crops_note:
        parts.append(f'<p class="note">{escape(content.crops_note)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _job_section(job: dict[str, object]) -> str:
    lines = [f"state <b>{escape(str(job['state']))}</b>, "
             f"{job['images_done']}/{job['images_total']} images"]
    if job["state"] == "SUCCEEDED":
        lines.append(f"PSNR {_number(job['psnr'], 4)} dB, MS-SSIM {_number(job['msssim'], 6)}, "
                     f"runtime {_number(job['runtime_ms'], 1)} ms on {escape(str(job['device']))}"
                     f" (baseline {_number(job['baseline_runtime_ms'], 1)} ms); "
                     f"{escape(ratio_text(job))}")
        lines.append(f"score A {_number(job['score_a'], 3)}, score B {_number(job['score_b'], 3)}"
                     f", score C {_number(job['score_c'], 3)}")
    if job.get("error"):
        lines.append(f"error: {escape(str(job['error']))}")
    return "<p>" + "<br>".join(lines) + "</p>"


def _board_table(rows: list[BoardRow], focus_job: str) -> str:
    header = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    body = []
    for r in rows:
        team = escape(r.team) + (" (baseline)" if r.baseline else "") + (
            f' <span title="{escape(r.timing_flag)}">(!)</span>' if r.timing_flag else "")
        cells = [str(r.rank), team, escape(r.model_name)]
        numbers = [_number(r.psnr, 3), _number(r.msssim, 4), _number(r.mos, 2),
                   _number(r.runtime_ms if not r.on_gpu else None, 1),
                   _number(r.runtime_ms if r.on_gpu else None, 1),
                   _number(r.peak_memory_mb or None, 0), _number(r.baseline_runtime_ms, 1),
                   _number(r.score_a, 2), _number(r.score_b, 2), _number(r.score_c, 2)]
        focus = ' class="focus"' if r.job_id == focus_job else ""
        body.append(f"<tr{focus}>" + "".join(f"<td>{c}</td>" for c in cells)
                    + "".join(f'<td class="num">{n}</td>' for n in numbers) + "</tr>")
    if not rows:
        body.append(f'<tr><td colspan="{len(COLUMNS)}">no scored jobs yet</td></tr>')
    return (f'<table class="board"><thead><tr>{header}</tr></thead><tbody>'
            + "".join(body) + "</tbody></table>")


def _figure(name: str, caption: str) -> str:
    return (f'<figure><img src="{name}" alt="{escape(caption)}">'
            f"<figcaption class=\"note\">{escape(caption)}</figcaption></figure>")


def _crop_row(why: str, image: str, psnr: float, msssim: float) -> str:
    cells = "".join(
        f'<figure><img src="crop-{why}-{part}.png" alt="{part} of {escape(image)}">'
        f"<figcaption>{label}</figcaption></figure>"
        for part, label in (("input", "model input"), ("output", "model output"),
                            ("target", "target")))
    return (f"<h3>{why}: {escape(image)} (PSNR {_number(psnr, 2)} dB, MS-SSIM "
            f"{_number(msssim, 4)})</h3><div class=\"crops\">{cells}</div>")


def _number(value: object, digits: int) -> str:
    """A table figure; '-' when there is none (no MOS, a GPU column of a CPU entry)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):  # JSON's stand-ins for inf and nan (job_summary)
        return escape(value)
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number):
        return "-"
    return "inf" if math.isinf(number) else f"{number:.{digits}f}"
