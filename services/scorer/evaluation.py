"""One job's evaluation: load the model, measure quality image by image, time the model and the
track's baseline on the same node, and score. Free of gRPC: the services are reached through
the two backend protocols below."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Protocol

import numpy as np

from services.core.errors import Cancelled, FailedPrecondition, InvalidArgument
from services.core.quality import PairQuality, QualityOptions
from services.core.timing import (
    STOP_CACHED,
    DeviceTiming,
    RuntimeComparison,
    Stopping,
    TimingOptions,
    relative_width,
)
from services.core.track import Phase, Track
from services.scorer.jobs import Job, JobResult, JobSpec
from services.scorer.pipeline import StageClock
from services.scorer.protocol import (
    QualityItem,
    quality_items,
    timing_input,
    timing_probes,
)
from services.scorer.quality_stage import Outcome, QualityStage
from services.scorer.scoring import (
    KAPPA,
    UNSCORED,
    ScoreConstants,
    ScoreInputs,
    Scores,
    TrackConstants,
    compute_scores,
    score_constants,
)
from services.scorer.store import JobStore
from services.scorer.telemetry import image_evaluated, stage, timed_stage

log = logging.getLogger(__name__)


class InferenceBackend(Protocol):
    @property
    def parallelism(self) -> int: ...  # calls worth having in flight (one per endpoint)

    def refresh(self) -> None: ...  # re-resolve the endpoints

    def load_model(
        self, name: str, graph_def: bytes | None, repository_model: str,
        input_tensor: str, output_tensor: str,
    ) -> str: ...

    def infer(self, model: str, image: np.ndarray) -> np.ndarray: ...

    # Unloads the models not in `keep` that no call used for idle_s; returns their names.
    def forget_idle(self, keep: set[str], idle_s: float) -> list[str]: ...

    # A timing takes as long as its models need: `deadline_s` bounds the call (default: the
    # backend's own per-call deadline). With `probes` (a list, maybe empty) the timing is
    # checked for a model that recognises the timing input (services/inference/integrity.py).
    def benchmark(self, model: str, image: np.ndarray, options: TimingOptions,
                  measure_memory: bool = False, abort: threading.Event | None = None,
                  deadline_s: float | None = None,
                  probes: list[np.ndarray] | None = None) -> DeviceTiming: ...

    def compare(self, model: str, baseline: str, image: np.ndarray, options: TimingOptions,
                measure_memory: bool = False, abort: threading.Event | None = None,
                deadline_s: float | None = None,
                probes: list[np.ndarray] | None = None) -> RuntimeComparison: ...

    # The model's peak memory on `image`, kept by inference for the timing's measure_memory;
    # returns (MiB, whether it was known from an earlier job).
    def measure_memory(self, model: str, image: np.ndarray) -> tuple[float, bool]: ...


class MetricsBackend(Protocol):
    @property
    def parallelism(self) -> int: ...

    def refresh(self) -> None: ...

    def evaluate(
        self, output: np.ndarray, target: np.ndarray, options: QualityOptions
    ) -> PairQuality: ...


class Interrupted(Exception):
    """The scorer is stopping; the job stays RUNNING and resumes after the restart."""


@dataclass
class EvaluationSettings:
    baselines: dict[Track, bytes]  # the SRCNN baseline graph of each track
    timing: TimingOptions = field(default_factory=TimingOptions)
    baseline_max_age_s: float = 3600.0
    kappa: float = KAPPA
    mos_ref: dict[Track, float] = field(default_factory=dict)  # overrides of published values
    metrics_in_flight: int = 2  # metric calls overlapping the next images' inference
    # interleaved: model and baseline timed A B A B ... in each job (drift cancels);
    # cached: the baseline timed alone, once per track, node and input size, until too old.
    timing_mode: str = "interleaved"
    # A job running longer than this is stopped and failed (each call has its own deadline).
    job_timeout_s: float = 4 * 3600.0
    # A sharded job none of whose batch shards has reported for this long fails (platform).
    shard_silence_s: float = 1800.0
    # A model that no queued or running job needs is unloaded from inference once no call has
    # used it for this long (its statistics and Prometheus series stay that long for
    # dashboards and reports' crops); a long challenge would otherwise keep every submission.
    model_idle_s: float = 600.0
    # A model whose timing is not trusted (it appears to recognise the timing input): its job
    # fails ("fail"), or succeeds flagged on the leaderboard ("flag"), the organisers' choice.
    timing_check: str = "fail"
    # A challenge's own score constants per track (its definition file); SPEC.md's otherwise.
    constants: dict[Track, TrackConstants] = field(default_factory=dict)


def baseline_name(track: Track) -> str:
    return f"baseline-{track.value}"


class BaselineTimings:
    """The track baselines: loaded on the inference service, and in cached timing mode their
    runtime per track, node and input size, re-measured when older than max_age."""

    def __init__(self, inference: InferenceBackend, settings: EvaluationSettings) -> None:
        self._inference = inference
        self._settings = settings
        self._cache: dict[tuple[Track, tuple[int, ...], str], tuple[float, DeviceTiming]] = {}
        self._lock = threading.Lock()

    def load(self, track: Track) -> str:
        return self._inference.load_model(
            baseline_name(track), self._settings.baselines[track], "", "", ""
        )

    def cached(self, track: Track, image: np.ndarray, node: str) -> DeviceTiming:
        key = (track, tuple(image.shape), node)
        with self._lock:
            cached = self._cache.get(key)
            if cached and time.time() - cached[0] < self._settings.baseline_max_age_s:
                return cached[1]
            timing = self._inference.benchmark(self.load(track), image, self._settings.timing)
            self._cache[(track, tuple(image.shape), timing.node)] = (time.time(), timing)
            return timing


class Evaluation:
    def __init__(
        self,
        job: Job,
        store: JobStore,
        inference: InferenceBackend,
        metrics: MetricsBackend,
        baselines: BaselineTimings,
        settings: EvaluationSettings,
        on_progress: Callable[[], None],
        stopping: threading.Event,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.spec = job.spec
        self.store = store
        self.inference = inference
        self.metrics = metrics
        self.baselines = baselines
        self.settings = settings
        self.on_progress = on_progress
        self.stopping = stopping
        self.cancelled = cancelled or threading.Event()
        self.clock = StageClock()
        self.expired = False
        self._started = time.monotonic()
        self._memory_reused = False  # the model's peak memory known from an earlier job

    def remaining_s(self) -> float:
        """What is left of the job's time limit: the deadline of its longest calls."""
        return max(1.0, self.settings.job_timeout_s - (time.monotonic() - self._started))

    def expire(self) -> None:
        """The job's time limit: its work stops as if cancelled (the runner then fails it)."""
        self.expired = True
        self.cancelled.set()

    def run(self) -> JobResult:
        dataset = Path(self.spec.dataset)
        items = quality_items(self.spec.track, dataset)
        self.inference.refresh()  # endpoints added since the last job (new pods) take part
        self.metrics.refresh()
        with stage(self.spec.track, "load_model"):
            model = self._load_model()
        # The memory probe (a fresh process loading the model) runs beside the quality stage,
        # off the timing's path; the timing then uses its figure.
        memory = threading.Thread(target=self._probe_memory, args=(model, dataset),
                                  daemon=True, name=f"memory-{self.job.job_id}"[:40])
        memory.start()
        self._measure_quality(model, items)
        memory.join()
        self._progress(len(items), len(items), "timing")
        started = time.perf_counter()
        with stage(self.spec.track, "timing"):
            runtime = self._measure_runtime(model, dataset)
        timing_s = time.perf_counter() - started
        self._progress(len(items), len(items), "scoring")
        return self._result(runtime, len(items), timing_s)

    def check(self) -> None:
        """Raised between units of work: a stopping scorer or a cancelled job."""
        if self.stopping.is_set():
            raise Interrupted()
        if self.cancelled.is_set():
            raise Cancelled(f"job {self.job.job_id} was cancelled")

    def _probe_memory(self, model: str, dataset: Path) -> None:
        """Best effort: without its figure the timing measures the memory itself (and fails
        the job on a model over the limit)."""
        try:
            _, self._memory_reused = self.inference.measure_memory(
                model, timing_input(self.spec.track, dataset))
        except Exception as error:  # noqa: BLE001 - the timing measures it again, and says why
            log.info(f"memory probe before the timing failed: {error}",
                     extra={"job_id": self.job.job_id})

    def _load_model(self) -> str:
        return load_job_model(self.spec, self.store, self.inference)

    def _measure_quality(self, model: str, items: list[QualityItem]) -> None:
        """The images flow through prepare -> infer -> metrics -> store, each stage with its
        own workers: one inference call in flight per inference endpoint, `metrics_in_flight`
        per metrics endpoint. Results are stored per image, so a resumed job skips what is
        done."""
        done = self.store.image_results(self.job.job_id)
        todo = [item for item in items if item.name not in done]
        total, finished = len(items), len(items) - len(todo)
        self._progress(finished, total, "quality")
        track = self.spec.track

        def store(outcome: Outcome[QualityItem]) -> None:
            nonlocal finished
            item, quality = outcome.work, outcome.quality
            assert quality is not None  # model errors are not contained: they fail the job
            self.store.put_image_result(self.job.job_id, item.name, quality.psnr,
                                        quality.msssim)
            image_evaluated(track)
            finished += 1
            self._progress(finished, total, "quality")

        pipeline: QualityStage[QualityItem] = QualityStage(
            track, item_of=lambda item: item, model_of=lambda item: model,
            infer=self.inference.infer, evaluate=self.metrics.evaluate,
            inference_workers=self.inference.parallelism,
            metrics_workers=self.settings.metrics_in_flight * self.metrics.parallelism,
            # Each stage's latency also goes to Prometheus (pirm_scorer_stage_duration_seconds).
            timed=lambda name, work: timed_stage(track, name, work))
        pipeline.run(todo, store, check=self.check, clock=self.clock)

    def _measure_runtime(self, model: str, dataset: Path) -> RuntimeComparison:
        """The model's runtime and peak memory on the HD image, and the baseline's runtime on
        the same node, device and thread settings."""
        image = timing_input(self.spec.track, dataset)
        probes = timing_probes(self.spec.track, dataset, image.shape)
        self.check()
        track, options = self.spec.track, self.settings.timing
        if self.settings.timing_mode == "interleaved":
            baseline = self.baselines.load(track)
            return self._trusted(self.inference.compare(
                model, baseline, image, options, measure_memory=True, abort=self.cancelled,
                deadline_s=self.remaining_s(), probes=probes))
        runtime = self.inference.benchmark(model, image, options, measure_memory=True,
                                           abort=self.cancelled, deadline_s=self.remaining_s(),
                                           probes=probes)
        base = self.baselines.cached(track, image, runtime.node)
        # Independent measurements: the ratio of the two medians' intervals bounds it.
        low = base.timing.ci95_low_ms / runtime.timing.ci95_high_ms
        high = base.timing.ci95_high_ms / runtime.timing.ci95_low_ms
        return self._trusted(RuntimeComparison(
            solution=runtime,
            baseline=base,
            speed_ratio=base.timing.median_ms / runtime.timing.median_ms,
            ratio_ci95_low=low,
            ratio_ci95_high=high,
            stopping=Stopping(protocol=options.protocol, width=relative_width(low, high),
                              reason=STOP_CACHED),
        ))

    def _trusted(self, comparison: RuntimeComparison) -> RuntimeComparison:
        """The comparison, unless the model's timing check failed and such jobs fail."""
        failure = comparison.solution.check.failure
        if failure:
            log.warning(f"timing not trusted: {failure}", extra={"job_id": self.job.job_id})
            if self.settings.timing_check == "fail":
                raise InvalidArgument(f"the timing check failed: {failure}")
        return comparison

    def _result(self, comparison: RuntimeComparison, images: int, timing_s: float) -> JobResult:
        runtime, baseline = comparison.solution, comparison.baseline
        per_image = self.store.image_results(self.job.job_id)
        if len(per_image) != images:
            raise FailedPrecondition(
                f"job has {len(per_image)} scored images of {images}; cannot score it"
            )
        psnr = _mean([p for p, _ in per_image.values()])
        msssim = _mean([m for _, m in per_image.values()])
        stage_seconds = {**self.clock.busy_s, "quality_wall": self.clock.wall_s,
                         "timing_wall": timing_s}
        scores, constants = _scores(self.spec, _score_inputs(
            self.spec, psnr, msssim, runtime, baseline, self.spec.mos, self.settings))
        return JobResult(
            psnr=psnr,
            msssim=msssim,
            mos=self.spec.mos,
            runtime=runtime,
            baseline_runtime=baseline,
            scores=scores,
            constants=constants,
            images=images,
            software=software_versions(),
            speed_ratio=comparison.speed_ratio,
            speed_ratio_ci95=(comparison.ratio_ci95_low, comparison.ratio_ci95_high),
            timing_mode=self.settings.timing_mode,
            timing_stopping=self._stopping(comparison.stopping),
            stage_seconds={name: round(seconds, 6) for name, seconds in stage_seconds.items()},
        )

    def _stopping(self, stopping: Stopping) -> Stopping:
        if not self._memory_reused:
            return stopping
        return replace(stopping, reused=(
            *stopping.reused, "peak memory (same model bytes and input size on this node)"))

    def _progress(self, done: int, total: int, stage: str) -> None:
        self.store.set_progress(self.job.job_id, done, total, stage)
        self.on_progress()


def load_job_model(spec: JobSpec, store: JobStore, inference: InferenceBackend) -> str:
    """Loads a job's model (its stored bytes, or its repository model) on the inference
    service; returns the name to run it by."""
    graph_def = None if spec.repository_model else store.model_bytes(spec.model_sha256)
    return inference.load_model(spec.inference_name, graph_def, spec.repository_model,
                                spec.input_tensor, spec.output_tensor)


def rescored(result: JobResult, spec: JobSpec, mos: float | None,
             settings: EvaluationSettings) -> JobResult:
    """The result scored with this MOS (SPEC.md section 3); a final-phase result without a MOS
    stays unscored until SetMos gives one."""
    scores, constants = _scores(spec, _score_inputs(
        spec, result.psnr, result.msssim, result.runtime, result.baseline_runtime, mos, settings))
    return replace(result, mos=mos, scores=scores, constants=constants)


def _scores(spec: JobSpec, inputs: ScoreInputs) -> tuple[Scores, ScoreConstants]:
    unscored = spec.phase is Phase.FINAL and inputs.mos is None
    return UNSCORED if unscored else compute_scores(inputs), score_constants(inputs)


def _score_inputs(spec: JobSpec, psnr: float, msssim: float, runtime: DeviceTiming,
                  baseline: DeviceTiming, mos: float | None,
                  settings: EvaluationSettings) -> ScoreInputs:
    return ScoreInputs(
        track=spec.track,
        phase=spec.phase,
        psnr=psnr,
        msssim=msssim,
        runtime_ms=runtime.timing.median_ms,
        baseline_runtime_ms=baseline.timing.median_ms,
        mos=mos,
        kappa=settings.kappa,
        mos_ref=settings.mos_ref.get(spec.track),
        constants=settings.constants.get(spec.track),
    )


def _mean(values: list[float]) -> float:
    """The reported figure: the plain mean of per-image values (SPEC.md section 2, step 5)."""
    return math.fsum(values) / len(values)


def software_versions() -> str:
    names = ("pirm-eval", "tensorflow-cpu", "numpy", "scipy", "pillow")
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "; ".join(versions)
