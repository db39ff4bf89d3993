"""What commands print: one JSON document (with `--json`), or text — a job, the jobs table, a
leaderboard as the challenge's tables show it. Messages that must not mix with JSON go to
stderr. (Progress while a command waits is progress.py's.)"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.core.timing import Timing


def say(text: str) -> None:
    print(text, flush=True)


def say_aside(text: str) -> None:
    """Messages that must not mix with JSON on stdout."""
    print(text, file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, allow_nan=False))


def timing_summary(t: Timing) -> dict[str, Any]:
    """A runtime measurement as `--json` prints it."""
    return {
        "median_ms": t.median_ms, "p90_ms": t.p90_ms, "ci95_ms": [t.ci95_low_ms, t.ci95_high_ms],
        "min_ms": t.min_ms, "max_ms": t.max_ms, "mean_ms": t.mean_ms, "stdev_ms": t.stdev_ms,
        "runs": t.runs, "warmup_runs": t.warmup_runs,
    }


def cell(value: Any, width: int, digits: int) -> str:
    """A right-aligned table cell; `-` for a figure a job does not have."""
    if value is None or value == "":
        return " " * (width - 1) + "-"
    if isinstance(value, str):
        return f"{value:>{width}}"
    return f"{value:>{width}.{digits}f}"


def print_job(s: dict[str, Any]) -> None:
    """A `job_summary` as a few lines: state, figures, scores or why there are none."""
    print(f"job {s['job_id']}: {s['state']} (track {s['track']}, {s['phase']}, "
          f"{s['images_done']}/{s['images_total']} images)")
    if s["state"] == "SUCCEEDED":
        from services.client import ratio_text  # loaded already: the job came through it

        lo, hi = s["runtime_ci95_ms"]
        print(f"  PSNR {s['psnr']:.4f} dB   MS-SSIM {s['msssim']:.6f}")
        print(f"  runtime {s['runtime_ms']:.1f} ms (95% CI {lo:.1f}-{hi:.1f}, {s['runtime_runs']} "
              f"runs, {s['device']} on {s['node']}); baseline {s['baseline_runtime_ms']:.1f} ms")
        print(f"  {ratio_text(s)}")
        if s["awaiting_mos"]:
            print("  scores: waiting for the MOS (pirm set-mos JOB_ID --mos X)")
        else:
            print(f"  score A {s['score_a']:.3f}   score B {s['score_b']:.3f}   "
                  f"score C {s['score_c']:.3f}")
    if s.get("error"):
        print(f"  error: {s['error']}")


def jobs_table(summaries: list[dict[str, Any]]) -> str:
    """One line a job; `where` says where it stands: its place in the queue and expected
    start, or its stage and images done, or why it failed."""
    lines = [f"{'job':12}  {'track':5}  {'phase':10}  {'state':9}  {'team':16}  {'model':20}  "
             f"{'PSNR':>7}  {'MS-SSIM':>7}  {'ms':>8}  where"]
    for s in summaries:
        lines.append(f"{s['job_id']:12}  {s['track']:5}  {where_phase(s)[:10]:10}  "
                     f"{s['state']:9}  {s['team'][:16]:16}  {s['model_name'][:20]:20}  "
                     f"{cell(s.get('psnr'), 7, 3)}  {cell(s.get('msssim'), 7, 4)}  "
                     f"{cell(s.get('runtime_ms'), 8, 1)}  {where(s)}")
    return "\n".join(lines)


def where_phase(s: dict[str, Any]) -> str:
    return str(s.get("phase_name") or s["phase"])


def where(s: dict[str, Any]) -> str:
    """A job's whereabouts in a few words."""
    marks = [m for m, on in (("baseline", s.get("baseline")), ("selected", s.get("selected")),
                             (f"rerun of {s.get('rerun_of')}", s.get("rerun_of"))) if on]
    if s["state"] == "QUEUED" and s.get("queue_position"):
        start = str(s["estimated_start"]).replace("T", " ")[:19]
        marks.insert(0, f"#{s['queue_position']} in queue, starts ~{start} UTC")
    elif s["state"] == "RUNNING":
        marks.insert(0, f"{s.get('stage') or 'starting'}, "
                        f"{s['images_done']}/{s['images_total']} images")
    elif s["state"] == "FAILED" and s.get("error"):
        kind = f"{s.get('failure_kind') or 'failed'}: "
        marks.insert(0, kind + str(s["error"])[:60])
    return "; ".join(marks)


def leaderboard_table(track: str, by: str, rows: list[dict[str, Any]]) -> str:
    title = f"Track {track} leaderboard, ranked by score {by.upper()}"
    # The challenge's tables: fidelity, perception, runtime on CPU or GPU, RAM, three scores.
    header = (f"{'#':>2}  {'team':20}  {'PSNR':>7}  {'MS-SSIM':>7}  {'MOS':>5}  {'CPU ms':>8}  "
              f"{'GPU ms':>8}  {'RAM MB':>7}  {'base ms':>8}  {'score A':>8}  {'score B':>8}  "
              f"{'score C':>8}")
    lines = [title, header, "-" * len(header)]
    for r in rows:
        on_gpu = r.get("device", "").upper().startswith("GPU")
        lines.append(
            f"{r['rank']:>2}  {r['team'][:20]:20}  {cell(r['psnr'], 7, 3)}  "
            f"{cell(r['msssim'], 7, 4)}  {cell(r['mos'], 5, 2)}  "
            f"{cell(None if on_gpu else r['runtime_ms'], 8, 1)}  "
            f"{cell(r['runtime_ms'] if on_gpu else None, 8, 1)}  "
            f"{cell(r.get('peak_memory_mb') or None, 7, 0)}  "
            f"{cell(r['baseline_runtime_ms'], 8, 1)}  {cell(r['score_a'], 8, 2)}  "
            f"{cell(r['score_b'], 8, 2)}  {cell(r['score_c'], 8, 2)}"
        )
    for index, r in enumerate(rows):
        if r.get("baseline"):
            lines[3 + index] += "  (baseline)"
    flagged = [r for r in rows if r.get("timing_flag")]
    for r in flagged:
        lines[3 + rows.index(r)] += "  (!)"
    if flagged:
        lines.append("(!) timing not trusted: the model appears to recognise the timing input "
                     "(pirm status JOB --json shows why)")
    if not rows:
        lines.append("(no finished jobs)")
    return "\n".join(lines)
