"""Collects a report's content from the scorer through ScorerClient."""

from __future__ import annotations

import grpc

from services.client import ScorerClient, job_summary, leaderboard_rows
from services.core.track import Phase, Track
from services.report.content import (
    BoardRow,
    CropSet,
    ImageFigures,
    JobImages,
    ReportContent,
    best_and_worst,
)
from services.scorer.scoring import TRACKS

# Jobs whose per-image distribution a track report shows (the top of the board).
MAX_DISTRIBUTIONS = 12
CROP_SIZE = 128


def job_report(client: ScorerClient, job_id: str, by: str = "a") -> ReportContent:
    """A job's report: its figures and images, and its track's board with the job marked. What
    the phase keeps from the caller (a hidden board, per-image figures, crops) is left out and
    the report says so."""
    summary = job_summary(client.status(job_id))
    track, phase = Track(summary["track"]), summary["phase_name"] or summary["phase"]
    content = ReportContent(
        title=f"Job {job_id}: {summary['model_name'] or 'model'} ({summary['team'] or 'no team'})",
        track=track.value, phase=phase, rows=[], psnr_base=TRACKS[track].psnr_base,
        focus_job=job_id, job=summary)
    content.rows = board(client, content, Phase(summary["phase"]), by)
    figures = job_figures(client, content, job_id)
    content.images = [JobImages(job_id, summary["team"] or job_id, figures)]
    _add_crops(client, content, job_id, figures)
    return content


def track_report(client: ScorerClient, track: Track, phase: str, by: str = "a"
                 ) -> ReportContent:
    """A track's report: its board, the per-image distributions of the leading entries, and
    crops of the leader's best and worst images (as far as the phase lets the caller see)."""
    content = ReportContent(
        title=f"Track {track.value} leaderboard ({phase} phase, ranked by score {by.upper()})",
        track=track.value, phase=phase, rows=[], psnr_base=TRACKS[track].psnr_base)
    scoring = Phase(phase) if phase in set(Phase) else Phase.VALIDATION
    content.rows = board(client, content, scoring, by)
    content.images = [JobImages(r.job_id, r.team, job_figures(client, content, r.job_id))
                      for r in content.rows[:MAX_DISTRIBUTIONS]]
    if content.rows:
        _add_crops(client, content, content.rows[0].job_id, content.images[0].figures)
    return content


def board(client: ScorerClient, content: ReportContent, scoring: Phase, by: str
          ) -> list[BoardRow]:
    """The phase's board; none, with a note, when it is hidden from the caller."""
    try:
        response = client.leaderboard(Track(content.track), by=by, phase=scoring,
                                      phase_name=content.phase)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        _note(content, f"leaderboard not shown: {error.details()}")
        return []
    return [BoardRow(**row) for row in leaderboard_rows(response)]


def job_figures(client: ScorerClient, content: ReportContent, job_id: str
                ) -> list[ImageFigures]:
    """The job's per-image figures; none, with a note, when the phase shows the caller its
    aggregate results only."""
    try:
        images = client.job_images(job_id)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
        _note(content, f"per-image figures and crops not shown: {error.details()}")
        return []
    return [ImageFigures(i.image, i.psnr, i.msssim) for i in images]


def _note(content: ReportContent, text: str) -> None:
    if text not in content.notes:
        content.notes.append(text)


def _add_crops(client: ScorerClient, content: ReportContent, job_id: str,
               figures: list[ImageFigures]) -> None:
    chosen = best_and_worst(figures)
    if not chosen:
        return
    try:
        crops = client.image_crops(job_id, [f.image for _, f in chosen], CROP_SIZE)
    except grpc.RpcError as error:  # e.g. the dataset has moved: the rest is still worth having
        content.crops_note = f"crops unavailable: {error.code().name}: {error.details()}"
        return
    content.crops = [CropSet(why, f, c.input_png, c.output_png, c.target_png)
                     for (why, f), c in zip(chosen, crops, strict=True)]
    content.crops_job = job_id
