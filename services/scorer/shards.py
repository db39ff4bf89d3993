"""Sharded jobs: their quality stage is done by batch shards (`pirm shard`), which report each
image's figures here. Once every image is in, the runner claims the job (store.next_queued) and
times and scores it like any other; its quality pipeline then finds nothing left to do."""

from __future__ import annotations

from pathlib import Path

from services.core.errors import FailedPrecondition, InvalidArgument
from services.core.jobs import JobState
from services.core.quality import PairQuality
from services.scorer.jobs import Job
from services.scorer.protocol import check_defined, quality_items
from services.scorer.store import JobStore


def record_image_results(store: JobStore, job_id: str, results: dict[str, PairQuality],
                         error: str = "") -> Job:
    """Stores a shard's report (an image already stored keeps its figures); with an `error`,
    the job then fails with it. Returns the job."""
    job = store.get_job(job_id)
    if not job.spec.sharded:
        raise FailedPrecondition(
            f"job {job_id} is evaluated by the scorer itself: only jobs submitted with "
            "sharded=true take image results from batch shards")
    if error and job.state.final:
        return job  # failed by another shard's report already, or cancelled
    _check_images(job, results)
    if results:
        job = store.put_shard_results(job_id, results)
    if error:
        # A shard reports its model's own failure on an image (batch/shard.py).
        store.finish(job_id, JobState.FAILED, error=f"batch shard: {error}",
                     from_state=JobState.QUEUED, failure_kind="model")
        job = store.get_job(job_id)
    return job


def _check_images(job: Job, results: dict[str, PairQuality]) -> None:
    dataset = Path(job.spec.dataset)
    known = [item.name for item in quality_items(job.spec.track, dataset)]
    unknown = sorted(set(results) - set(known))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InvalidArgument(
            f"job {job.job_id}: {len(unknown)} reported images are not in its dataset "
            f"{dataset}: {shown}; report the file names of its quality images (e.g. {known[0]}) "
            "and check that the shard reads the same dataset as the job")
    for name, quality in results.items():
        check_defined(job.spec.track, name, quality)
