"""The server side of inference: which models are loaded, on which device's worker, and the
device locks that keep timing clean. TensorFlow itself runs in worker processes (worker.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from services.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    MemoryLimitExceeded,
    NotFound,
    PirmError,
)
from services.core.limits import (
    DEFAULT_MAX_MODEL_BYTES,
    DEFAULT_MEMORY_LIMIT_MB,
    MIB,
    check_model_size,
)
from services.core.timing import (
    Comparison,
    DeviceTiming,
    RuntimeComparison,
    Timing,
    TimingCheck,
    TimingOptions,
)
from services.inference import telemetry
from services.inference.graphs import DEFAULT_MAX_GRAPH_NODES, GraphSpec, repository_path
from services.inference.integrity import TINY_PX
from services.inference.worker import (
    ModelSource,
    SpareProcess,
    Worker,
    WorkerSettings,
    measure_peak_memory,
)

DEVICES = ("cpu", "gpu")
DEFAULT_MEMORY_LIMIT = DEFAULT_MEMORY_LIMIT_MB * MIB
VET_NICE = 10
# How long loading waits for the warm-up run (then reported ready); a slow model is not
# waited for beyond, so a submission is answered within seconds.
WARM_UP_WAIT_S = 10.0
UNCHECKED = TimingCheck()
PEAK_MEMORY_KEPT = 10_000  # figures of peak memory kept (a few hundred bytes each)
# One session run: VDSR, the challenge's slowest reference model, takes 30 s on an HD image
# and about 2 minutes on a full-size DIV2K one on this 2-core machine (measured, busy); the
# limit leaves room for a slower node and stays below the scorer's 600 s call deadline, so
# that a model past it fails with its own reason.
DEFAULT_MAX_RUN_S = 300.0


@dataclass(frozen=True)
class EngineSettings:
    intra_op_threads: int = os.cpu_count() or 1
    inter_op_threads: int = 1
    default_device: str = "cpu"
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    max_graph_nodes: int = DEFAULT_MAX_GRAPH_NODES
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT
    # What a worker (all its loaded models, any input) may allocate: 0 = four times the model
    # memory limit, room for quality images larger than HD.
    worker_memory_limit_bytes: int = 0
    max_run_s: float = DEFAULT_MAX_RUN_S
    repository: Path | None = None
    node: str = field(default_factory=socket.gethostname)


WARMUP_SHAPE = (1, 64, 64, 3)


@dataclass
class ModelStatistics:
    """Cumulative request figures of one model (what Triton's statistics extension reports)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    compute_ns: int = 0  # session.run alone
    last_inference_ms: int = 0
    ready: bool = False  # loaded and warmed up
    warmup_error: str = ""


class DeviceLock:
    """Shared for quality inference, exclusive for timing: a timed run never shares its device
    with our own load."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with telemetry.waiting_for_device(self.device, "shared"), self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @property
    def timing(self) -> bool:
        """A timing holds the device, or waits for it."""
        with self._cond:
            return self._writer

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with telemetry.waiting_for_device(self.device, "exclusive"), self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._writer = True  # new readers wait from now on
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Engine:
    """The models this service holds, by name, and one worker process per device."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._sources: dict[str, ModelSource] = {}
        self._specs: dict[str, GraphSpec] = {}
        self._stats: dict[str, ModelStatistics] = {}
        self._workers: dict[str, Worker] = {}
        self._unavailable: dict[str, str] = {}  # device -> why it cannot run here
        self._lock = threading.Lock()
        self._device_locks = {device: DeviceLock(device) for device in DEVICES}
        self._spare = SpareProcess()
        # Peak memory (MiB) by model bytes, tensors, input shape and device: a model's peak on
        # an input size is a property of its graph, so the same bytes need one probe per node.
        self._peak_mb: dict[tuple[str, str, str, tuple[int, ...], str], float] = {}
        # Submissions are vetted in a process of their own, so that accepting one never waits
        # for a timing that holds a device's worker for minutes.
        self._vetter = Worker(replace(self._worker_settings("cpu"), role="vet", nice=VET_NICE,
                                      intra_op_threads=1, inter_op_threads=1))
        self._ready = threading.Event()

    def start(self) -> None:
        """Starts the default device's worker, the vetting process and the memory probes' spare
        process, and waits for all three: the service is ready once no TensorFlow import is
        left to take CPU from the first job's inference (measured: it made the first DIV2K
        image 1.6 s slower)."""
        self._spare.prepare()
        vetter = threading.Thread(target=self._vetter.call, args=("ping",), daemon=True,
                                  name="inference-vetter-start")
        vetter.start()
        self._worker(self.settings.default_device).call("ping")
        vetter.join()
        self._spare.wait_ready()
        self._ready.set()

    @property
    def ready(self) -> bool:
        """Whether the engine can serve: started and not shutting down."""
        return self._ready.is_set()

    def drain(self) -> None:
        """The server is shutting down: not ready from now on; work in flight goes on."""
        self._ready.clear()

    def load(
        self, name: str, data: bytes, input_tensor: str = "", output_tensor: str = ""
    ) -> GraphSpec:
        """Vets a graph and holds it for the devices' workers, which load it on first use.
        Vetting runs in the vetting process (parsing untrusted bytes is isolated too, and never
        waits for a timing); the warm-up run follows in the background, waited for up to
        WARM_UP_WAIT_S unless a timing holds the device (a submission never waits for it)."""
        if not name:
            raise InvalidArgument("a model needs a name")
        check_model_size(len(data), self.settings.max_model_bytes)
        device = self.settings.default_device
        source = ModelSource(name, data, input_tensor, output_tensor,
                             self.settings.max_model_bytes, self.settings.max_graph_nodes)
        with self._lock:
            if self._sources.get(name) == source:  # the scorer loads at submission and per job
                return self._specs[name]
        try:
            spec: GraphSpec = self._vetter.call("vet", *source.load_args())
        except PirmError:
            telemetry.model_load_failed(device)
            raise
        with self._lock:
            self._sources[name] = source
            self._specs[name] = spec
            self._stats[name] = stats = ModelStatistics()
            for worker in self._workers.values():
                worker.loaded.discard(name)  # other bytes under this name: reloaded on use
            models_held = len(self._specs)
        telemetry.model_loaded(device, models_held)
        warming = threading.Thread(target=self._warm_up, args=(name, stats, device),
                                   daemon=True, name=f"warm-up-{name}"[:40])
        warming.start()
        if not self._device_locks[device].timing:
            warming.join(WARM_UP_WAIT_S)
        return spec

    def _warm_up(self, name: str, stats: ModelStatistics, device: str) -> None:
        """One run on a small image before the model is reported ready; a model that fails it
        stays loaded (its requests then fail with the model's own error) but never ready."""
        try:
            with self._device_locks[device].shared():
                self._worker(device).run(name, np.zeros(WARMUP_SHAPE, np.float32),
                                         models=self._sources_of(name))
        except NotFound:
            return  # unloaded meanwhile
        except PirmError as error:
            stats.warmup_error = str(error)
        else:
            stats.ready = True

    def statistics(self, name: str) -> ModelStatistics:
        with self._lock:
            stats = self._stats.get(name)
        if stats is None:
            raise NotFound(f"no model named {name!r} is loaded")
        return stats

    def load_from_repository(
        self, name: str, version: str, input_tensor: str = "", output_tensor: str = ""
    ) -> GraphSpec:
        path = repository_path(self.settings.repository, name, version)
        check_model_size(path.stat().st_size, self.settings.max_model_bytes)  # before reading
        return self.load(name, path.read_bytes(), input_tensor, output_tensor)

    def models(self) -> list[GraphSpec]:
        with self._lock:
            return list(self._specs.values())

    def unload(self, name: str) -> None:
        with self._lock:
            source = self._sources.pop(name, None)
            self._specs.pop(name, None)
            self._stats.pop(name, None)
            workers = [w for w in self._workers.values() if name in w.loaded]
            models_held = len(self._specs)
        if source is None:
            raise NotFound(f"no model named {name!r} is loaded")
        telemetry.model_unloaded(name, models_held)
        for worker in workers:
            worker.loaded.discard(name)
            worker.call("unload", name)

    def infer(self, name: str, image: np.ndarray, device: str = "") -> tuple[np.ndarray, float]:
        """Runs the model once; returns its output and the wall time of the run in ms."""
        device = self._device(device)
        image = _as_model_input(image)
        start = time.perf_counter_ns()
        try:
            with self._device_locks[device].shared():
                output, run_ms = self._worker(device).run(name, image,
                                                          models=self._sources_of(name))
        except PirmError:
            self._record(name, time.perf_counter_ns() - start, None)
            raise
        self._record(name, time.perf_counter_ns() - start, int(run_ms * 1e6))
        telemetry.model_ran(name, device, run_ms)
        return output, run_ms

    def _record(self, name: str, elapsed_ns: int, compute_ns: int | None) -> None:
        with self._lock:
            stats = self._stats.get(name)
            if stats is None:
                return
            stats.last_inference_ms = int(time.time() * 1000)
            if compute_ns is None:
                stats.fail_count += 1
                stats.fail_ns += elapsed_ns
            else:
                stats.success_count += 1
                stats.success_ns += elapsed_ns
                stats.compute_ns += compute_ns

    def benchmark(
        self, name: str, image: np.ndarray, options: TimingOptions, device: str = "",
        measure_memory: bool = False, abort: threading.Event | None = None,
        probes: list[np.ndarray] | None = None,
    ) -> DeviceTiming:
        """Times the model on one input, alone on its device; optionally its peak memory.
        With `probes` (a list, maybe empty: see integrity.py) the timing is also checked for a
        model that recognises its input. Setting `abort` stops the measurement (its worker is
        killed) with Cancelled."""
        device = self._device(device)
        image = _as_model_input(image)
        probes = _as_probes(probes)
        with self._alone_on(device):
            timing, check = self._timed(device, "benchmark", name, image, options, probes,
                                        models=self._sources_of(name), abort=abort)
            measured = self._device_timing(timing, device, image, check)
            if measure_memory:
                measured = replace(measured, peak_memory_mb=self._known_peak_mb(
                    name, image, device, abort))
        return measured

    def benchmark_pirm2018(self, name: str, images: list[np.ndarray],
                           device: str = "") -> DeviceTiming:
        """The challenge's own timing (4 HD images, the last 2 averaged), for comparison."""
        device = self._device(device)
        images = [_as_model_input(image) for image in images]
        with self._alone_on(device):
            timing: Timing = self._timed(device, "benchmark_pirm2018", name, images,
                                         models=self._sources_of(name))
        return self._device_timing(timing, device, images[0])

    def compare(
        self, name: str, baseline: str, image: np.ndarray, options: TimingOptions,
        device: str = "", measure_memory: bool = False, abort: threading.Event | None = None,
        probes: list[np.ndarray] | None = None,
    ) -> RuntimeComparison:
        """Times the model and the baseline interleaved on the same worker and settings;
        `probes` as in benchmark."""
        device = self._device(device)
        image = _as_model_input(image)
        probes = _as_probes(probes)
        with self._alone_on(device):
            result: Comparison = self._timed(
                device, "compare", name, baseline, image, options, probes,
                models=self._sources_of(name, baseline), abort=abort,
            )
            solution = self._device_timing(result.solution, device, image, result.check)
            if measure_memory:
                solution = replace(solution, peak_memory_mb=self._known_peak_mb(
                    name, image, device, abort))
        return RuntimeComparison(
            solution=solution,
            baseline=self._device_timing(result.baseline, device, image),
            speed_ratio=result.speed_ratio,
            ratio_ci95_low=result.ratio_ci95_low,
            ratio_ci95_high=result.ratio_ci95_high,
            stopping=result.stopping,
        )

    def measure_memory(self, name: str, image: np.ndarray, device: str = "",
                       abort: threading.Event | None = None) -> tuple[float, bool]:
        """(peak memory in MiB, whether it was known already): the model's peak on `image` in a
        fresh process, run beside quality inference (a shared hold of the device: never beside
        a timing, which the probe's CPU would disturb), kept for the model's bytes and the
        input's size, so that the job's timing and a resubmission of the same bytes use it."""
        device = self._device(device)
        image = _as_model_input(image)
        key = self._memory_key(name, image, device)
        with self._lock:
            known = self._peak_mb.get(key)
        if known is not None:
            return known, True
        with self._device_locks[device].shared():
            return self._known_peak_mb(name, image, device, abort), False

    def _memory_key(self, name: str, image: np.ndarray,
                    device: str) -> tuple[str, str, str, tuple[int, ...], str]:
        (source,) = self._sources_of(name)
        return source.sha256, source.input_tensor, source.output_tensor, tuple(image.shape), device

    def _known_peak_mb(self, name: str, image: np.ndarray, device: str,
                       abort: threading.Event | None = None) -> float:
        key = self._memory_key(name, image, device)
        with self._lock:
            known = self._peak_mb.get(key)
        if known is not None:
            return known
        peak = self._peak_memory_mb(name, image, device, abort)
        with self._lock:
            self._peak_mb[key] = peak
            while len(self._peak_mb) > PEAK_MEMORY_KEPT:
                del self._peak_mb[next(iter(self._peak_mb))]
        return peak

    @contextlib.contextmanager
    def _alone_on(self, device: str) -> Iterator[None]:
        """What every measurement holds: the device exclusively (a timing, then maybe the
        memory probe, which must not run beside another timing either)."""
        with self._device_locks[device].exclusive():
            yield

    def _timed(self, device: str, method: str, *args: Any, models: tuple[ModelSource, ...],
               abort: threading.Event | None = None) -> Any:
        """A timing call on the device's worker, with no TensorFlow import running beside it:
        a spare still importing is stopped meanwhile (not waited for). Outside the pause, the
        memory probe after it may take that spare."""
        with self._spare.paused():
            return self._worker(device).call(method, *args, models=models, abort=abort)

    def worker_restarts(self) -> int:
        with self._lock:
            return sum(w.restarts for w in self._workers.values())

    def close(self) -> None:
        self._ready.clear()
        with self._lock:
            workers = list(self._workers.values())
        for worker in [*workers, self._vetter]:
            worker.stop()
        self._spare.close()

    def _peak_memory_mb(self, name: str, image: np.ndarray, device: str,
                        abort: threading.Event | None = None) -> float:
        (source,) = self._sources_of(name)
        limit = self.settings.memory_limit_bytes
        peak = measure_peak_memory(self._worker_settings(device), source, image, limit,
                                   abort=abort, spare=self._spare)
        telemetry.peak_memory_measured(name, device, peak)
        if peak > limit:
            raise MemoryLimitExceeded(
                f"model {name!r} exceeds the memory limit: its peak is {peak / MIB:.0f} MiB on "
                f"an input of shape {image.shape}, the limit {limit / MIB:.0f} MiB"
            )
        return peak / MIB

    def _device_timing(self, timing: Timing, device: str, image: np.ndarray,
                       check: TimingCheck = UNCHECKED) -> DeviceTiming:
        return DeviceTiming(
            timing=timing,
            device=device,
            intra_op_threads=self.settings.intra_op_threads,
            inter_op_threads=self.settings.inter_op_threads,
            node=self.settings.node,
            input_shape=tuple(image.shape),
            check=check,
        )

    def _sources_of(self, *names: str) -> tuple[ModelSource, ...]:
        with self._lock:
            missing = [name for name in names if name not in self._sources]
            if missing:
                raise NotFound(f"no model named {missing[0]!r} is loaded; call LoadModel first")
            return tuple(self._sources[name] for name in names)

    def _worker_settings(self, device: str) -> WorkerSettings:
        cap = self.settings.worker_memory_limit_bytes or 4 * self.settings.memory_limit_bytes
        return WorkerSettings(device, self.settings.intra_op_threads,
                              self.settings.inter_op_threads, cap,
                              max_run_s=self.settings.max_run_s)

    def _worker(self, device: str) -> Worker:
        with self._lock:
            if device in self._unavailable:
                raise FailedPrecondition(self._unavailable[device])
            worker = self._workers.get(device)
            if worker is None:
                worker = self._workers[device] = Worker(self._worker_settings(device))
        return worker

    def _device(self, device: str) -> str:
        device = device or self.settings.default_device
        if device not in DEVICES:
            raise InvalidArgument(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
        if device in self._unavailable:
            raise FailedPrecondition(self._unavailable[device])
        worker = self._worker(device)
        if not worker.running:
            # Starting the worker is what tells whether this node has the device at all.
            try:
                worker.call("ping")
            except FailedPrecondition as error:
                with self._lock:
                    self._unavailable[device] = str(error)
                raise
        return device


def _as_probes(probes: list[np.ndarray] | None) -> list[np.ndarray] | None:
    """The timing check's images; each at least a tiny probe's size (integrity.TINY_PX)."""
    if probes is None:
        return None
    checked = [_as_model_input(probe) for probe in probes]
    if any(min(probe.shape[1:3]) < TINY_PX for probe in checked):
        raise InvalidArgument(f"a timing probe must be at least {TINY_PX}x{TINY_PX} px")
    return checked


def _as_model_input(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = image[np.newaxis]
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[3] != 3 or 0 in image.shape:
        raise InvalidArgument(f"model input must be [1, H, W, 3], got shape {image.shape}")
    if image.dtype not in (np.float32, np.uint8):
        raise InvalidArgument(f"model input must be float32 in [0, 1] or uint8 pixels (fed as "
                              f"value / 255), got {image.dtype}")
    return image
