"""A track's table as the challenge published it (`pirm export`): team, PSNR, MS-SSIM, MOS in
the final phase, the runtime on each device measured, RAM and the three scores, the baseline
rows among the teams and marked, sorted by the chosen score; written as CSV, Markdown or LaTeX.
Plain data in, text out (no gRPC): the rows are `leaderboard_rows`'."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FORMATS = ("csv", "md", "latex")
BASELINE_MARK = " (baseline)"  # after a baseline row's name in the Markdown and LaTeX tables


@dataclass(frozen=True)
class Column:
    title: str
    value: Callable[[dict[str, Any]], float | None]
    digits: int  # in the Markdown and LaTeX tables; CSV keeps every digit


def _on(device: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: r["runtime_ms"] if device_of(r) == device else None


def device_of(row: dict[str, Any]) -> str:
    """CPU or GPU: where the row's runtime was measured (the table has a column for each)."""
    return "GPU" if str(row.get("device", "")).upper().startswith("GPU") else "CPU"


def columns(rows: list[dict[str, Any]], final: bool) -> list[Column]:
    """The published tables' figures: MOS in the final phase only, a runtime column per
    device among the rows (CPU when there are none)."""
    chosen = [Column("PSNR", lambda r: r["psnr"], 2), Column("MS-SSIM", lambda r: r["msssim"], 4)]
    if final:
        chosen.append(Column("MOS", lambda r: r["mos"], 2))
    devices = sorted({device_of(r) for r in rows}) or ["CPU"]
    chosen += [Column(f"{device} runtime, ms", _on(device), 1) for device in devices]
    chosen.append(Column("RAM, MB", lambda r: r["peak_memory_mb"] or None, 0))
    chosen += [Column(f"Score {s.upper()}", lambda r, s=s: r[f"score_{s}"], 2)  # type: ignore[misc]
               for s in "abc"]
    return chosen


def ordered(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Best score first; ties keep the leaderboard's order (the earlier submission)."""
    return sorted(rows, key=lambda r: -_number(r[f"score_{by}"]))


def _number(value: Any) -> float:
    number = float(value)
    return number if not math.isnan(number) else -math.inf


def export_table(rows: list[dict[str, Any]], final: bool, by: str, form: str) -> str:
    """The table in `form` (csv, md or latex)."""
    rows = ordered(rows, by)
    chosen = columns(rows, final)
    return {"csv": _csv, "md": _markdown, "latex": _latex}[form](rows, chosen)


def _csv(rows: list[dict[str, Any]], chosen: list[Column]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Rank", "Team", "Baseline", *(c.title for c in chosen)])
    for rank, row in enumerate(rows, start=1):
        writer.writerow([rank, row["team"], "yes" if row["baseline"] else "no",
                         *(_plain(c.value(row)) for c in chosen)])
    return out.getvalue()


def _plain(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _fixed(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _name(row: dict[str, Any]) -> str:
    return str(row["team"]) + (BASELINE_MARK if row["baseline"] else "")


def _markdown(rows: list[dict[str, Any]], chosen: list[Column]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [line(["#", "Team", *(c.title for c in chosen)]),
             line(["--:", ":--", *("--:" for _ in chosen)])]
    for rank, row in enumerate(rows, start=1):
        team = _name(row).replace("|", "\\|")
        lines.append(line([str(rank), team, *(_fixed(c.value(row), c.digits) for c in chosen)]))
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escaped(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex(rows: list[dict[str, Any]], chosen: list[Column]) -> str:
    """A booktabs tabular, as the challenge report's tables are typeset."""
    lines = [r"\begin{tabular}{rl" + "r" * len(chosen) + "}", r"\toprule",
             " & ".join(["\\#", "Team", *(latex_escaped(c.title) for c in chosen)]) + r" \\",
             r"\midrule"]
    for rank, row in enumerate(rows, start=1):
        cells = [str(rank), latex_escaped(_name(row)),
                 *(_fixed(c.value(row), c.digits) for c in chosen)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
