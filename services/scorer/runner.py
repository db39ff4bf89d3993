"""Runs queued jobs on worker threads and tells watchers when a job changes."""

from __future__ import annotations

import logging
import threading
import time

from services.common.incidents import report_incident
from services.core.errors import Cancelled, InvalidArgument, PirmError
from services.core.jobs import JobState
from services.core.track import Track
from services.scorer.evaluation import (
    BaselineTimings,
    Evaluation,
    EvaluationSettings,
    InferenceBackend,
    Interrupted,
    MetricsBackend,
    baseline_name,
)
from services.scorer.jobs import Job, inference_model_name
from services.scorer.store import JobStore
from services.scorer.telemetry import job_finished

log = logging.getLogger(__name__)
# Whose failure a failed job is: a team's quota counts the model's, never the platform's.
MODEL, PLATFORM = "model", "platform"


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        inference: InferenceBackend,
        metrics: MetricsBackend,
        settings: EvaluationSettings,
        concurrency: int = 1,
    ) -> None:
        self.store = store
        self.inference = inference
        self.metrics = metrics
        self.settings = settings
        self.baselines = BaselineTimings(inference, settings)
        self.concurrency = concurrency
        self._changed = threading.Condition()
        self._version = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cancel_lock = threading.Lock()
        self._cancel_events: dict[str, threading.Event] = {}  # of the jobs running here
        self._released_at = 0.0  # time.monotonic() of the last _release_models
        self._shards_checked_at = 0.0  # time.monotonic() of the last _fail_silent_shards

    def start(self) -> None:
        requeued = self.store.requeue_running()
        if requeued:
            log.info("resuming interrupted jobs", extra={"jobs": requeued})
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._work, name=f"job-runner-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Running jobs stop at their next image and stay RUNNING: a restart resumes them."""
        self._stopping.set()
        self.notify()
        for thread in self._threads:
            thread.join(timeout)

    def cancel(self, job_id: str) -> Job:
        """Cancels a queued or running job; a running one stops at its next unit of work."""
        before = self.store.get_job(job_id).state
        job = self.store.cancel(job_id)
        with self._cancel_lock:
            event = self._cancel_events.get(job_id)
        if event is not None and job.state is JobState.CANCELLED:
            event.set()
        if before is JobState.QUEUED and job.state is JobState.CANCELLED:
            job_finished(job)  # a running job is counted when its runner lets go of it
        self.notify()
        return job

    def notify(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def wait_for_change(self, version: int, timeout: float) -> int:
        """Blocks until something changed after `version` (or timeout); returns the new version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != version or self._stopping.is_set(),
                                   timeout)
            return self._version

    @property
    def version(self) -> int:
        with self._changed:
            return self._version

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                self._run_next()
            except Exception:  # noqa: BLE001 - e.g. an unwritable store: the runner lives on
                log.exception("job runner error; unfinished jobs resume after a restart")
                self._stopping.wait(1.0)

    def _fail_silent_shards(self) -> None:
        """Sharded jobs whose batch shards went silent fail with the reason (checked now and
        then, by whichever runner thread is free)."""
        now = time.monotonic()
        if now - self._shards_checked_at < min(30.0, self.settings.shard_silence_s / 4):
            return
        self._shards_checked_at = now
        for job_id in self.store.fail_silent_shards(self.settings.shard_silence_s):
            log.warning("sharded job failed: no shard reported",
                        extra={"job_id": job_id, "silence_s": self.settings.shard_silence_s})
            job_finished(self.store.get_job(job_id))
            self.notify()

    def _run_next(self) -> None:
        self._fail_silent_shards()
        job = self.store.next_queued()
        if job is None:
            if time.monotonic() - self._released_at >= min(60.0, self.settings.model_idle_s):
                self._release_models()  # an idle scorer lets its last models go too
            self.wait_for_change(self.version, timeout=1.0)
            return
        self.notify()
        self._run(job)

    def _run(self, job: Job) -> None:
        log.info("job started", extra={"job_id": job.job_id, "track": job.spec.track.value})
        cancelled = threading.Event()
        with self._cancel_lock:
            self._cancel_events[job.job_id] = cancelled
        # A cancel that reached the store between claiming the job and registering the event.
        if self.store.get_job(job.job_id).state is JobState.CANCELLED:
            cancelled.set()
        evaluation = Evaluation(
            job, self.store, self.inference, self.metrics, self.baselines, self.settings,
            on_progress=self.notify, stopping=self._stopping, cancelled=cancelled,
        )
        # The job's time limit stops it as a cancel would, then fails it (see _evaluate).
        limit = threading.Timer(self.settings.job_timeout_s, evaluation.expire)
        limit.daemon = True
        limit.start()
        try:
            self._evaluate(job, evaluation)
        finally:
            limit.cancel()
            with self._cancel_lock:
                self._cancel_events.pop(job.job_id, None)
        final = self.store.get_job(job.job_id)
        if final.state.final:  # not when interrupted by a shutdown: it resumes after
            job_finished(final)
            self._release_models()
        self.notify()

    def _release_models(self) -> None:
        """After a job, and now and then while no job waits (runner threads only, never a
        gRPC call's): unloads from inference the models that no queued or running job needs
        and that nothing used for `model_idle_s` (ended or cancelled jobs', a refused
        submission's, a report's crops')."""
        self._released_at = time.monotonic()
        needed = {inference_model_name(sha) for sha in self.store.unfinished_models()}
        needed |= {baseline_name(track) for track in Track}
        try:
            released = self.inference.forget_idle(needed, self.settings.model_idle_s)
        except PirmError as error:  # a model left loaded is no reason to fail anything
            log.warning("models not released", extra={"error": str(error)})
            return
        if released:
            log.info("models unloaded", extra={"models": released})

    def _evaluate(self, job: Job, evaluation: Evaluation) -> None:
        try:
            result = evaluation.run()
        except Interrupted:
            log.info("job interrupted by shutdown", extra={"job_id": job.job_id})
        except Cancelled:
            if evaluation.expired:
                self._fail(job, f"the job ran longer than its time limit of "
                                f"{self.settings.job_timeout_s:.0f} s (--job-timeout-s) and was "
                                "stopped", MODEL)
            else:
                log.info("job cancelled", extra={"job_id": job.job_id})
        except PirmError as error:
            # The model's own failures (it fails on an input, exceeds a limit, games the clock)
            # are InvalidArgument; the rest (a service unavailable, a lost timing) are ours.
            self._fail(job, str(error), MODEL if isinstance(error, InvalidArgument) else PLATFORM)
        except Exception:  # noqa: BLE001 - a job fails, the runner survives
            # Teams read job errors: the detail goes to the log only.
            self._fail(job, report_incident(log, "job crashed", job_id=job.job_id), PLATFORM)
        else:
            if self.store.finish(job.job_id, JobState.SUCCEEDED, result=result):
                log.info("job succeeded", extra={"job_id": job.job_id, "psnr": result.psnr,
                                                 "msssim": result.msssim})

    def _fail(self, job: Job, error: str, kind: str) -> None:
        log.info("job failed", extra={"job_id": job.job_id, "error": error, "kind": kind})
        self.store.finish(job.job_id, JobState.FAILED, error=error, failure_kind=kind)


