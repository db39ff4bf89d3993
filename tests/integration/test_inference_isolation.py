"""Untrusted models run in worker processes: a crash fails only its request, memory is measured
by the kernel in a fresh process and limited."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from pirm.v1 import inference_pb2, inference_pb2_grpc

from services.common.server import RunningServer
from services.core.channel import open_channel
from services.core.tensors import from_tensor, to_tensor
from services.inference import telemetry
from services.inference.engine import EngineSettings
from services.inference.server import create_server
from services.inference.worker import SpareProcess
from tests.integration.helpers import graph_bytes, is_serving

Stub = inference_pb2_grpc.InferenceServiceStub
MIB = 1024 * 1024


def _tiling(factor: int) -> bytes:
    """Output = input, after materialising the input tiled factor x factor (factor^2 x memory)."""

    def build(tf: object, x: object) -> None:
        big = tf.tile(x, [1, factor, factor, 1])  # type: ignore[attr-defined]
        tf.identity(x + tf.reduce_mean(big) * 0.0, name="output")  # type: ignore[attr-defined]

    return graph_bytes(build)


# Workers of other servers in this test process (the session cluster's) are not ours to kill.
_OTHER_WORKERS: set[int] = set()


@pytest.fixture()
def server(request: pytest.FixtureRequest) -> Iterator[tuple[RunningServer, Stub]]:
    limit_mb = getattr(request, "param", 3584)
    _OTHER_WORKERS.clear()
    _OTHER_WORKERS.update(_worker_pids())
    running = create_server("127.0.0.1:0", EngineSettings(memory_limit_bytes=limit_mb * MIB))
    yield running, Stub(open_channel(f"127.0.0.1:{running.port}", 64))
    running.stop(grace=0.5)


def _worker_pids() -> list[int]:
    """Our spawned TensorFlow workers: children of this process running multiprocessing."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if (parent == os.getpid() and b"spawn_main" in cmdline
                and (entry / "comm").read_text().startswith("pirm-tf-cpu")
                and int(entry.name) not in _OTHER_WORKERS):
            pids.append(int(entry.name))
    return pids


def test_crash_in_worker_fails_the_request_and_the_service_recovers(
    server: tuple[RunningServer, Stub],
) -> None:
    running, stub = server
    pb = graph_bytes(lambda tf, x: tf.identity(tf.nn.relu(x), name="output"))
    stub.LoadModel(inference_pb2.LoadModelRequest(name="m", graph_def=pb), timeout=60)
    image = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    outcome: dict[str, grpc.RpcError] = {}

    def long_benchmark() -> None:
        options = inference_pb2.TimingOptions(min_runs=10**6, min_seconds=60, max_runs=10**6)
        try:
            stub.Benchmark(inference_pb2.BenchmarkRequest(model="m", input=to_tensor(image),
                                                          options=options), timeout=120)
        except grpc.RpcError as error:
            outcome["error"] = error

    # A quick timing first (the model's load and warm-up in the worker), so that the long one
    # below starts timing at once.
    quick = inference_pb2.TimingOptions(warmup_runs=1, min_runs=2, max_runs=3)
    stub.Benchmark(inference_pb2.BenchmarkRequest(model="m", input=to_tensor(image),
                                                  options=quick), timeout=120)
    # An inference first: the worker that dies holds a shared-memory region the next must not.
    stub.Infer(inference_pb2.InferRequest(model="m", input=to_tensor(image)), timeout=60)
    restarts_before = worker_restarts()
    thread = threading.Thread(target=long_benchmark)
    thread.start()
    time.sleep(3)  # the worker is in the timing loop
    (pid,) = _worker_pids()
    os.kill(pid, signal.SIGKILL)  # what a TensorFlow abort or the OOM killer does
    thread.join(60)
    error = outcome["error"]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "crashed its inference worker" in error.details() and "SIGKILL" in error.details()
    # A new worker serves the same model (reloaded from the bytes the server kept).
    assert is_serving(open_channel(f"127.0.0.1:{running.port}", 64))
    output = from_tensor(stub.Infer(inference_pb2.InferRequest(model="m", input=to_tensor(image)),
                                    timeout=60).output)
    np.testing.assert_array_equal(output, np.maximum(image, 0))
    assert _worker_pids() != [pid]
    assert worker_restarts() == restarts_before + 1  # what dashboards and alerts see


def worker_restarts() -> float:
    """The service's restart counter (its Prometheus registry lives in this process)."""
    value = telemetry.REGISTRY.get_sample_value("pirm_inference_worker_restarts_total",
                                                {"device": "cpu"})
    return value or 0.0


def test_peak_memory_is_measured(server: tuple[RunningServer, Stub]) -> None:
    _, stub = server
    stub.LoadModel(inference_pb2.LoadModelRequest(name="tiler", graph_def=_tiling(16)),
                   timeout=60)
    # The server (this test's process) once held far more than the model: a probe spawned
    # after that must still report the model's own peak (ru_maxrss would inherit this one).
    server_peak = np.ones(1280 * MIB, np.uint8)
    del server_peak
    # The first probe's spare existed before; the second's is spawned after. Two sizes: a
    # figure is kept per model bytes and input size (the second would reuse the first's).
    for width in (256, 248):
        image = np.zeros((1, 256, width, 3), np.float32)
        tiled_mb = 256 * 16 * width * 16 * 3 * 4 / MIB  # the tensor the model must hold
        timing = stub.Benchmark(inference_pb2.BenchmarkRequest(
            model="tiler", input=to_tensor(image), measure_memory=True,
            options=inference_pb2.TimingOptions(warmup_runs=1, min_runs=1, min_seconds=0.0,
                                                max_runs=1)), timeout=300).timing
        assert tiled_mb <= timing.peak_memory_mb < 4 * tiled_mb


def test_memory_is_probed_once_per_model_bytes_and_input_size(
        server: tuple[RunningServer, Stub]) -> None:
    """MeasureMemory (the scorer calls it beside the quality stage) keeps its figure: the same
    bytes under another name (a resubmission) and the timing's measure_memory reuse it; another
    input size is probed anew."""
    _, stub = server
    # One file's bytes under two names: two builds of the same graph may serialise its
    # attribute maps in another order, so they are not "the same bytes".
    model = _tiling(8)
    for name in ("first", "resubmitted"):
        stub.LoadModel(inference_pb2.LoadModelRequest(name=name, graph_def=model), timeout=60)
    image = np.zeros((1, 128, 128, 3), np.float32)
    tiled_mb = 128 * 8 * 128 * 8 * 3 * 4 / MIB

    def probe(name: str, size: int = 128) -> inference_pb2.MeasureMemoryResponse:
        return stub.MeasureMemory(inference_pb2.MeasureMemoryRequest(
            model=name, input=to_tensor(np.zeros((1, size, 128, 3), np.float32))), timeout=300)

    first = probe("first")
    assert not first.reused and tiled_mb <= first.peak_memory_mb < 4 * tiled_mb + 64
    again = probe("resubmitted")
    assert again.reused and again.peak_memory_mb == first.peak_memory_mb
    timing = stub.Benchmark(inference_pb2.BenchmarkRequest(
        model="resubmitted", input=to_tensor(image), measure_memory=True,
        options=inference_pb2.TimingOptions(warmup_runs=0, min_runs=1, min_seconds=0.0,
                                            max_runs=1)), timeout=300).timing
    assert timing.peak_memory_mb == first.peak_memory_mb
    assert not probe("first", 120).reused


@pytest.mark.parametrize("server", [100], indirect=True)
def test_model_over_the_memory_limit_fails_clearly(server: tuple[RunningServer, Stub]) -> None:
    running, stub = server
    stub.LoadModel(inference_pb2.LoadModelRequest(name="tiler", graph_def=_tiling(16)),
                   timeout=60)
    image = np.zeros((1, 256, 256, 3), np.float32)
    with pytest.raises(grpc.RpcError) as error:
        stub.Benchmark(inference_pb2.BenchmarkRequest(
            model="tiler", input=to_tensor(image), measure_memory=True,
            options=inference_pb2.TimingOptions(warmup_runs=1, min_runs=1, max_runs=1)),
            timeout=300)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "memory limit" in error.value.details()
    assert is_serving(open_channel(f"127.0.0.1:{running.port}", 64))


def _cpu_ticks_and_state(pid: int) -> tuple[int, str]:
    """(user + system clock ticks, state letter) of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), fields[0]


def test_a_spare_importing_tensorflow_is_stopped_while_a_measurement_runs() -> None:
    """The memory probes' spare process imports TensorFlow (seconds of CPU): a timing neither
    runs beside that import nor waits for it. While `paused` is held the import is stopped
    (state T, no CPU time gained); afterwards it goes on and the spare becomes ready."""
    spare = SpareProcess()
    try:
        spare.prepare()
        deadline = time.monotonic() + 30
        while spare._starting is None or spare._starting.pid is None:  # noqa: SLF001
            assert time.monotonic() < deadline, "the spare process did not start"
            time.sleep(0.01)
        pid = spare._starting.pid  # noqa: SLF001
        entered = time.monotonic()
        with spare.paused():
            assert time.monotonic() - entered < 1.0  # no wait for the import
            time.sleep(0.5)
            before, state = _cpu_ticks_and_state(pid)
            time.sleep(2.0)
            after, state_after = _cpu_ticks_and_state(pid)
        assert state == state_after == "T", (state, state_after)
        assert after == before
        spare.wait_ready()
        taken = spare.take()
        assert taken is not None and taken[0].pid == pid and taken[0].is_alive()
        taken[0].kill()
        taken[0].join(5)
    finally:
        spare.close()
