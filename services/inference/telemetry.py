"""The inference service's Prometheus metrics, recorded in the server process: by the engine,
and by the server's handle on each worker (worker.Worker) for restarts.

TensorFlow runs in worker processes, but every result (a run's time, a measured peak memory, a
crash) comes back to the server process through a pipe, so the workers record nothing
themselves and the service needs no multiprocess mode: one registry, one scrape target.

Model names are labels: they are the names models are loaded under (the scorer names a
submission by its content hash), one per distinct model, and their series are removed when
the model is unloaded."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DEVICES = ("cpu", "gpu")
LOCK_MODES = ("shared", "exclusive")  # quality inference shares a device; timing has it alone

# This service's metrics, exported by its process only (see services.common.telemetry).
REGISTRY = CollectorRegistry(auto_describe=True)

MODEL_LOADS = Counter(
    "pirm_inference_model_loads", "Graphs vetted and loaded into a worker.", ["device"],
    registry=REGISTRY,
)
MODEL_LOAD_FAILURES = Counter(
    "pirm_inference_model_load_failures", "Graphs refused or failing to load.", ["device"],
    registry=REGISTRY,
)
MODELS_LOADED = Gauge(
    "pirm_inference_models_loaded", "Models held by the service now.", registry=REGISTRY,
)
MODEL_RUN_SECONDS = Histogram(
    "pirm_inference_model_run_seconds",
    "Time of one model run for an inference request (the session run in the worker).",
    ["model", "device"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
IMAGES_INFERRED = Counter(
    "pirm_inference_images", "Images run through a model for requests.", ["device"],
    registry=REGISTRY,
)
WORKER_RESTARTS = Counter(
    "pirm_inference_worker_restarts", "TensorFlow worker processes started again after dying.",
    ["device"], registry=REGISTRY,
)
DEVICE_LOCK_WAIT_SECONDS = Histogram(
    "pirm_inference_device_lock_wait_seconds",
    "Time a request waited for its device: timing runs have it alone, other runs share it.",
    ["device", "mode"],
    buckets=(0.0001, 0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
MODEL_PEAK_MEMORY_BYTES = Gauge(
    "pirm_inference_model_peak_memory_bytes",
    "A model's last measured peak memory on its timing input (RSS growth, or GPU peak).",
    ["model", "device"],
    registry=REGISTRY,
)

for _device in DEVICES:  # series exist from the start, so that increase() counts the first event
    for _counter in (MODEL_LOADS, MODEL_LOAD_FAILURES, IMAGES_INFERRED, WORKER_RESTARTS):
        _counter.labels(_device)
    for _mode in LOCK_MODES:
        DEVICE_LOCK_WAIT_SECONDS.labels(_device, _mode)


def model_loaded(device: str, models_held: int) -> None:
    MODEL_LOADS.labels(device).inc()
    MODELS_LOADED.set(models_held)


def model_load_failed(device: str) -> None:
    MODEL_LOAD_FAILURES.labels(device).inc()


def model_unloaded(name: str, models_held: int) -> None:
    MODELS_LOADED.set(models_held)
    for family in (MODEL_RUN_SECONDS, MODEL_PEAK_MEMORY_BYTES):
        for device in DEVICES:
            with contextlib.suppress(KeyError):  # never ran on that device
                family.remove(name, device)


def model_ran(name: str, device: str, run_ms: float) -> None:
    MODEL_RUN_SECONDS.labels(name, device).observe(run_ms / 1000)
    IMAGES_INFERRED.labels(device).inc()


def worker_restarted(device: str) -> None:
    WORKER_RESTARTS.labels(device).inc()


def peak_memory_measured(name: str, device: str, peak_bytes: int) -> None:
    MODEL_PEAK_MEMORY_BYTES.labels(name, device).set(peak_bytes)


@contextlib.contextmanager
def waiting_for_device(device: str, mode: str) -> Iterator[None]:
    """Times the block that acquires a device lock."""
    start = time.perf_counter()
    yield
    DEVICE_LOCK_WAIT_SECONDS.labels(device, mode).observe(time.perf_counter() - start)
