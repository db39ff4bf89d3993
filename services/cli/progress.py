"""What the CLI shows while it waits: progress bars (rich) when stdout is a terminal, plain lines
otherwise (pipes, logs, tests), both on stderr so that stdout carries only results (`--json`);
and the final summary table of the jobs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def interactive() -> bool:
    return sys.stdout.isatty()


class JobBars:
    """One bar per job (images done of total, stage); without a terminal, one line each time a
    job's state or stage changes."""

    def __init__(self, live: bool | None = None) -> None:
        self.live = interactive() if live is None else live
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stage]}"), TimeElapsedColumn(),
            console=Console(file=sys.stderr), transient=False)
        self._tasks: dict[str, Any] = {}
        self._last: dict[str, tuple[str, str]] = {}

    def __enter__(self) -> JobBars:
        if self.live:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self._progress.stop()

    def update(self, summary: dict[str, Any]) -> None:
        """Shows a job's `job_summary`."""
        job_id, state, stage = summary["job_id"], summary["state"], summary["stage"]
        label = f"{job_id} {summary['team'] or summary['model_name']}"[:36]
        if self.live:
            if job_id not in self._tasks:
                self._tasks[job_id] = self._progress.add_task(label, total=None, stage="")
            self._progress.update(self._tasks[job_id], total=summary["images_total"] or None,
                                  completed=summary["images_done"],
                                  stage=stage or state.lower())
        elif self._last.get(job_id) != (state, stage):
            self._last[job_id] = (state, stage)
            print(f"job {job_id}: {state}{' ' + stage if stage else ''} "
                  f"({summary['images_done']}/{summary['images_total']} images)",
                  file=sys.stderr, flush=True)


@contextmanager
def working(what: str, live: bool | None = None) -> Iterator[None]:
    """A spinner for local work of unknown length (a terminal), else one line saying what."""
    if interactive() if live is None else live:
        with Console(file=sys.stderr).status(what):
            yield
    else:
        print(f"{what} ...", file=sys.stderr, flush=True)
        yield


SUMMARY_COLUMNS = (("job", "job_id", ""), ("team", "team", ""), ("state", "state", ""),
                   ("PSNR", "psnr", ".3f"), ("MS-SSIM", "msssim", ".4f"),
                   ("runtime ms", "runtime_ms", ".1f"), ("score A", "score_a", ".2f"),
                   ("score B", "score_b", ".2f"), ("score C", "score_c", ".2f"))


def summary_table(summaries: list[dict[str, Any]]) -> str:
    """The jobs' final figures, one row each, as plain text (rich draws it on a terminal)."""
    rows = [[_cell(s.get(key), spec) for _, key, spec in SUMMARY_COLUMNS] for s in summaries]
    widths = [max(len(title), *(len(r[i]) for r in rows)) if rows else len(title)
              for i, (title, _, _) in enumerate(SUMMARY_COLUMNS)]
    lines = ["  ".join(f"{title:>{w}}" if spec else f"{title:<{w}}"
                       for (title, _, spec), w in zip(SUMMARY_COLUMNS, widths, strict=True))]
    lines += ["  ".join(f"{cell:>{w}}" if spec else f"{cell:<{w}}"
                        for cell, (_, _, spec), w in zip(row, SUMMARY_COLUMNS, widths,
                                                          strict=True))
              for row in rows]
    return "\n".join(lines)


def print_summary_table(summaries: list[dict[str, Any]], title: str = "Results") -> None:
    if not interactive():
        print(summary_table(summaries), flush=True)
        return
    table = Table(title=title)
    for name, _, spec in SUMMARY_COLUMNS:
        table.add_column(name, justify="right" if spec else "left")
    for s in summaries:
        table.add_row(*(_cell(s.get(key), spec) for _, key, spec in SUMMARY_COLUMNS))
    Console().print(table)


def _cell(value: Any, spec: str) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str) or not spec:
        return str(value)
    return format(value, spec)
