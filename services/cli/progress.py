"""What the CLI shows while it waits: progress bars (rich) when stdout is a terminal, plain lines
otherwise (pipes, logs, tests), both on stderr so that stdout carries only results (`--json`);
and the final summary table of the jobs. Only the commands that wait import it (rich is not
what `pirm status` should pay for)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.client import ScorerClient, job_summary


def interactive() -> bool:
    return sys.stdout.isatty()


# What a job's stage is doing, for the lines that say it is still at it.
STAGE_WORK = {
    "quality": "the model on each image, then its PSNR and MS-SSIM",
    "timing": "the model and the SRCNN baseline timed in turn on an HD image, then the model's "
              "peak memory",
}
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


class JobBars:
    """One bar per job (images done of total, stage); without a terminal, one line each time a
    job's state or stage changes, and every `still_every_s` a line for a job still in the same
    stage (a timing takes minutes, with no change to show)."""

    def __init__(self, live: bool | None = None, still_every_s: float = 30.0) -> None:
        self.live = interactive() if live is None else live
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stage]}"), TimeElapsedColumn(),
            console=Console(file=sys.stderr), transient=False)
        self._tasks: dict[str, Any] = {}
        self._last: dict[str, tuple[str, str]] = {}
        self._latest: dict[str, tuple[dict[str, Any], float]] = {}  # summary, since (monotonic)
        self._lock = threading.Lock()
        self._still_every_s = still_every_s
        self._closed = threading.Event()

    def __enter__(self) -> JobBars:
        if self.live:
            self._progress.start()
        else:
            threading.Thread(target=self._say_still, daemon=True, name="job-bars").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
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
            return
        with self._lock:
            if self._last.get(job_id) != (state, stage):
                self._last[job_id] = (state, stage)
                self._latest[job_id] = (summary, time.monotonic())
                _say_job(summary)
            else:
                self._latest[job_id] = (summary, self._latest[job_id][1])

    def _say_still(self) -> None:
        while not self._closed.wait(self._still_every_s):
            with self._lock:
                for summary, since in self._latest.values():
                    if summary["state"] not in FINAL_STATES:
                        _say_job(summary, time.monotonic() - since)


def _say_job(summary: dict[str, Any], still_s: float | None = None) -> None:
    """`job ID: STATE stage (done/total images)`; for a job still in its stage, for how long and
    what the stage does."""
    stage = summary["stage"]
    text = (f"job {summary['job_id']}: {summary['state']}{' ' + stage if stage else ''} "
            f"({summary['images_done']}/{summary['images_total']} images)")
    if still_s is not None:
        work = STAGE_WORK.get(stage)
        text += f", still after {still_s:.0f} s{': ' + work if work else ''}"
    print(text, file=sys.stderr, flush=True)


def follow_jobs(client: ScorerClient, job_ids: list[str]) -> list[dict[str, Any]]:
    """Shows the jobs' progress until each is final; returns their `job_summary`."""
    summaries = []
    with JobBars() as bars:
        for job_id in job_ids:
            summary = job_summary(client.get(job_id))
            for job in client.watch(job_id):
                summary = job_summary(job)
                bars.update(summary)
            summaries.append(summary)
    return summaries


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
