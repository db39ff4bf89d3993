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
    """A job's report: its figures and images, and its track's board with the job marked."""
    summary = job_summary(client.status(job_id))
    track, phase = Track(summary["track"]), Phase(summary["phase"])
    content = ReportContent(
        title=f"Job {job_id}: {summary['model_name'] or 'model'} ({summary['team'] or 'no team'})",
        track=track.value, phase=phase.value, rows=board(client, track, phase, by),
        psnr_base=TRACKS[track].psnr_base, focus_job=job_id, job=summary)
    figures = job_figures(client, job_id)
    content.images = [JobImages(job_id, summary["team"] or job_id, figures)]
    _add_crops(client, content, job_id, figures)
    return content


def track_report(client: ScorerClient, track: Track, phase: Phase, by: str = "a"
                 ) -> ReportContent:
    """A track's report: its board, the per-image distributions of the leading entries, and
    crops of the leader's best and worst images."""
    rows = board(client, track, phase, by)
    content = ReportContent(
        title=f"Track {track.value} leaderboard ({phase.value} phase, ranked by score "
              f"{by.upper()})",
        track=track.value, phase=phase.value, rows=rows, psnr_base=TRACKS[track].psnr_base)
    content.images = [JobImages(r.job_id, r.team, job_figures(client, r.job_id))
                      for r in rows[:MAX_DISTRIBUTIONS]]
    if rows:
        _add_crops(client, content, rows[0].job_id, content.images[0].figures)
    return content


def board(client: ScorerClient, track: Track, phase: Phase, by: str) -> list[BoardRow]:
    return [BoardRow(**row) for row in
            leaderboard_rows(client.leaderboard(track, by=by, phase=phase))]


def job_figures(client: ScorerClient, job_id: str) -> list[ImageFigures]:
    return [ImageFigures(i.image, i.psnr, i.msssim) for i in client.job_images(job_id)]


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
