"""Inference worker processes: TensorFlow runs in a child process per device, supervised by the
server. A model that crashes or aborts TensorFlow, or runs past the time limit of a run, fails
its request with a clear error; the worker is started again and the service keeps serving.

Workers are started with the spawn method (a fresh interpreter), which is safe even after the
gRPC server exists, unlike fork.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from services.common.incidents import report_incident
from services.core import errors
from services.inference import telemetry
from services.inference.exchange import ServerTensors, WorkerTensors

log = logging.getLogger(__name__)
_CONTEXT = multiprocessing.get_context("spawn")
_POLL_S = 0.2
SPARE_START_S = 300.0  # a spare that takes longer to import TensorFlow is given up


class WorkerCrashed(errors.InvalidArgument):
    """The model took its worker process down (a TensorFlow abort, a segfault, the OOM killer)."""


class RunTooLong(errors.InvalidArgument):
    """A session run of the model lasted longer than the limit; its worker was killed."""


class RunClock:
    """When the worker's current session run started and on what: shared memory the worker
    writes around each run and the server reads while it waits, so that a run past the time
    limit is stopped (a session run cannot be interrupted but by killing its process). Times
    are CLOCK_MONOTONIC, one clock for every process of the machine. A hostile graph cannot
    write here (it runs only allowlisted ops); the server reads numbers and a name, nothing
    else."""

    _NAME_BYTES = 128

    def __init__(self) -> None:
        self._values = _CONTEXT.RawArray("d", 3)  # started (0: no run), height, width
        self._name = _CONTEXT.RawArray("c", self._NAME_BYTES)

    def started(self, model: str, shape: tuple[int, ...]) -> None:
        self._name.value = model.encode()[: self._NAME_BYTES - 1]
        self._values[1], self._values[2] = shape[1], shape[2]
        self._values[0] = time.monotonic()

    def stopped(self) -> None:
        self._values[0] = 0.0

    def overrun(self, limit_s: float) -> tuple[str, tuple[int, ...]] | None:
        """The model and input shape of a run in progress for longer than `limit_s`."""
        started = self._values[0]
        if not limit_s or not started or time.monotonic() - started <= limit_s:
            return None
        name = self._name.value.decode(errors="replace")
        return name, (1, int(self._values[1]), int(self._values[2]), 3)


@dataclass(frozen=True)
class ModelSource:
    """What a worker needs to (re)load a model after it starts or restarts."""

    name: str
    data: bytes
    input_tensor: str
    output_tensor: str
    max_bytes: int
    max_nodes: int

    def load_args(self) -> tuple[Any, ...]:
        return (self.name, self.data, self.input_tensor, self.output_tensor, self.max_bytes,
                self.max_nodes)

    @functools.cached_property
    def sha256(self) -> str:
        """Of the model's bytes, hashed once per loaded model (what memory figures are kept
        by: a model's peak on an input size is a property of its graph)."""
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class WorkerSettings:
    device: str
    intra_op_threads: int
    inter_op_threads: int
    # Heap the worker may add once TensorFlow is up (0: no cap). The memory limit of a model is
    # measured on an HD image by the probe; this cap is looser (quality images are larger) but
    # keeps a hostile graph from exhausting the node: its allocation fails inside TensorFlow.
    data_limit_bytes: int = 0
    # A vetting process (Engine's vetter) parses and imports submissions while a timing may run
    # on the device's worker: it runs at a lower priority so that it disturbs the timing less.
    role: str = ""  # "" for a device's worker; its process is named pirm-tf-<role or device>
    nice: int = 0
    # Seconds one session run may last before the worker is killed (0: no limit).
    max_run_s: float = 0.0


def name_process(name: str) -> None:
    """The process's name in ps and top (/proc/PID/comm, at most 15 bytes)."""
    with open("/proc/self/comm", "w") as comm:
        comm.write(name[:15])


def _serve(conn: Connection, settings: WorkerSettings, clock: RunClock) -> None:
    """The worker's loop: (method, args) in, ("ok", result) or ("error", (kind, text)) out."""
    name_process(f"pirm-tf-{settings.role or settings.device}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    if settings.nice:
        os.nice(settings.nice)
    try:
        from services.inference.runtime import ModelRuntime

        runtime = ModelRuntime(settings.device, settings.intra_op_threads,
                               settings.inter_op_threads, clock)
    except errors.PirmError as error:
        conn.send(("error", (type(error).__name__, str(error))))
        return
    if settings.data_limit_bytes:
        cap_data_segment(settings.data_limit_bytes)
    conn.send(("ok", None))
    shared = WorkerTensors(conn, runtime)
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            return
        target = shared if method in _SHARED_METHODS else runtime
        conn.send(_call(target, method, args))


_SHARED_METHODS = frozenset({"map_tensors", "run_shared"})


def _call(target: Any, method: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    return _outcome(lambda: getattr(target, method)(*args))


# The kind of an unexpected error: its text is the stack, for the server's log only.
_UNEXPECTED = "unexpected"


class WorkerError(Exception):
    """An unexpected error in a TensorFlow process, as logged by the server (its stack)."""


def _outcome(run: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", result) or ("error", (kind, text)): what crosses the pipe back to the server."""
    try:
        return "ok", run()
    except errors.PirmError as error:
        return "error", (type(error).__name__, str(error))
    except Exception:  # noqa: BLE001 - the worker lives on; the server logs it (_raise)
        return "error", (_UNEXPECTED, traceback.format_exc())


def _raise(kind: str, text: str) -> None:
    """Raises in the server the domain error the worker reported; an unexpected one becomes an
    incident: the stack in the server's log, the caller told only its id."""
    if kind == _UNEXPECTED:
        raise errors.PirmError(report_incident(
            log, "unexpected error in a TensorFlow process", WorkerError(text.rstrip())))
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.PirmError)):
        cls = errors.PirmError
    raise cls(text)


class Worker:
    """The server's handle on one worker process; one request at a time."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.restarts = 0
        self.loaded: set[str] = set()  # model names loaded in the current process
        self._lock = threading.Lock()
        self._process: Any = None
        self._started = False  # a process was started before: the next start is a restart
        self._conn: Connection | None = None
        self._tensors = ServerTensors()
        self._clock = RunClock()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def call(self, method: str, *args: Any, models: tuple[ModelSource, ...] = (),
             abort: threading.Event | None = None) -> Any:
        """Calls the runtime in the worker, (re)starting it and loading `models` first if the
        current process does not hold them. When `abort` is set meanwhile, the worker is killed
        (a session run cannot be interrupted otherwise) and Cancelled raised; so is a session
        run past `max_run_s`, with RunTooLong. The next call starts a fresh worker."""
        with self._lock:
            self._prepare(models)
            return self._request(method, args, abort)

    def run(self, name: str, image: Any,
            models: tuple[ModelSource, ...] = ()) -> tuple[Any, float]:
        """One run of a model: the image in and its output out through shared memory (see
        exchange.py), not the pipe. Returns (output, milliseconds of the run)."""
        with self._lock:
            self._prepare(models)
            size = self._tensors.needs_region(image)
            if size:
                assert self._conn is not None
                self._tensors.map_new(size, self._conn, self._process.pid)
                self._receive_result("map_tensors")
            args = (name, *self._tensors.write_input(image))
            run_ms = self._request("run_shared", args)
            return self._tensors.read_output(image), run_ms

    def _prepare(self, models: tuple[ModelSource, ...]) -> None:
        """A running worker holding `models`."""
        if not self.running:
            self._start()
        for model in models:
            if model.name not in self.loaded:
                self._request("load", model.load_args())
                self.loaded.add(model.name)

    def _request(self, method: str, args: tuple[Any, ...],
                 abort: threading.Event | None = None) -> Any:
        assert self._conn is not None
        self._conn.send((method, args))
        return self._receive_result(method, abort)

    def _receive_result(self, method: str, abort: threading.Event | None = None) -> Any:
        status, value = self._receive(method, abort)
        if status == "error":
            _raise(*value)
        return value

    def _start(self) -> None:
        if self._started:
            self.restarts += 1
            telemetry.worker_restarted(self.settings.device)
        self._started = True
        self._clock.stopped()  # a killed process may have left its run's start behind
        parent, child = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(
            target=_serve, args=(child, self.settings, self._clock), daemon=True,
            name=f"inference-worker-{self.settings.device}",
        )
        self._process.start()
        child.close()
        self._conn = parent
        self.loaded.clear()
        self._tensors.close()  # a new process maps a new region on its first run
        status, value = self._receive("start")
        if status == "error":
            self._process.join(5)
            self._process = None
            _raise(*value)
        log.info("worker started", extra={"device": self.settings.device,
                                          "pid": self._process.pid, "restarts": self.restarts})

    def _receive(self, method: str, abort: threading.Event | None = None) -> tuple[str, Any]:
        assert self._conn is not None
        while not self._conn.poll(_POLL_S):
            if abort is not None and abort.is_set():
                self._kill(method)
            overrun = self._clock.overrun(self.settings.max_run_s)
            if overrun is not None:
                self._stop_overrun(method, *overrun)
            if not self._process.is_alive():
                break
        else:
            try:
                return tuple(self._conn.recv())
            except EOFError:
                pass
        self._process.join(5)
        code = self._process.exitcode
        self._process = None
        cause = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        log.warning("worker died", extra={"device": self.settings.device, "method": method,
                                          "cause": cause})
        raise WorkerCrashed(
            f"the model crashed its inference worker during {method} ({cause}); the worker "
            "was restarted, other requests are unaffected"
        )

    def _kill(self, method: str) -> None:
        self._process.kill()
        self._process.join(5)
        self._process = None
        log.info("worker killed: its caller cancelled", extra={"device": self.settings.device,
                                                             "method": method})
        raise errors.Cancelled(f"{method} was cancelled by its caller; the worker was restarted")

    def _stop_overrun(self, method: str, model: str, shape: tuple[int, ...]) -> None:
        self._process.kill()
        self._process.join(5)
        self._process = None
        limit = self.settings.max_run_s
        log.warning("worker killed: a run exceeded the time limit",
                    extra={"device": self.settings.device, "method": method, "model": model,
                           "input_shape": list(shape), "max_run_s": limit})
        raise RunTooLong(
            f"model {model!r} ran longer than {limit:g} s on an input of shape {shape} and was "
            "stopped: that is the limit of one run on this inference service (--max-run-s, env "
            "PIRM_MAX_RUN_S). Its worker was restarted; other requests are unaffected"
        )

    def stop(self) -> None:
        with self._lock:
            if self._process is not None and self._process.is_alive():
                self._process.terminate()
                self._process.join(5)
            self._process = None
            self._tensors.close()


# -- peak memory of a model in a fresh process -------------------------------------------------


def _probe_memory(settings: WorkerSettings, model: ModelSource, image: Any,
                  limit_bytes: int) -> tuple[int, int]:
    """Loads and runs the model once in this fresh process; returns its resident size before
    the model was loaded and the kernel's peak resident size (VmHWM) after the run."""
    from services.inference.runtime import (
        ModelRuntime,
        peak_resident_bytes,
        reset_peak_resident,
        resident_bytes,
    )

    runtime = ModelRuntime(settings.device, settings.intra_op_threads, settings.inter_op_threads)
    reset_peak_resident()
    before = resident_bytes()
    # Allocations beyond the limit fail inside TensorFlow instead of exhausting the node.
    cap_data_segment(limit_bytes + limit_bytes // 4)
    runtime.load(*model.load_args())
    runtime.run(model.name, image)
    if settings.device == "gpu":
        # On a GPU the model's memory is the device allocator's, not the process's RSS.
        return 0, runtime.gpu_peak_bytes()
    return before, peak_resident_bytes()


def cap_data_segment(extra_bytes: int) -> None:
    """RLIMIT_DATA at the current data segment plus `extra_bytes` (heap and anonymous mmaps)."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (_data_segment_bytes() + extra_bytes, hard))


def _data_segment_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_peak_memory(settings: WorkerSettings, model: ModelSource, image: Any,
                        limit_bytes: int, timeout_s: float = 600.0,
                        abort: threading.Event | None = None,
                        spare: SpareProcess | None = None) -> int:
    """Peak memory in bytes of loading and running the model once on `image`; Cancelled (the
    probe killed) when `abort` is set meanwhile."""
    before, peak = call_in_fresh_process(
        _probe_memory, (settings, model, image, limit_bytes), name="inference-memory-probe",
        timeout_s=timeout_s, abort=abort, task="the memory probe", spare=spare,
        likely_cause=f"most likely it exceeds the memory limit of {limit_bytes / 2**20:.0f} MiB")
    return max(0, int(peak) - int(before))


def _run_once(conn: Connection, function: Callable[..., Any], args: tuple[Any, ...],
              quiet: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process stops
    if quiet:  # native libraries' logs and banners stay off the user's terminal
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    conn.send(_outcome(lambda: function(*args)))


def _wait_for_call(conn: Connection) -> None:
    """A spare: imports TensorFlow, says so, then runs the one call it is sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name_process("pirm-tf-spare")
    import services.inference.runtime  # noqa: F401 - TensorFlow's import is what is saved

    conn.send("ready")
    function, args = conn.recv()
    conn.send(_outcome(lambda: function(*args)))


class SpareProcess:
    """One spawned process that has already imported TensorFlow and waits for a single call:
    a fresh process for each memory probe without its 3-5 s import in the job. The next spare
    is started after each call; while a measurement runs, a spare still importing is stopped
    (`paused`): its import never runs beside a timing, and no timing waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spare: tuple[multiprocessing.process.BaseProcess, Connection] | None = None
        self._warming: threading.Thread | None = None
        self._starting: multiprocessing.process.BaseProcess | None = None
        self._closed = False
        self._pauses = 0  # measurements running (one per device at most)

    def prepare(self) -> None:
        with self._lock:
            if self._closed or self._spare is not None or self._warming is not None:
                return
            self._warming = threading.Thread(target=self._warm, daemon=True,
                                             name="inference-spare")
            self._warming.start()

    def _warm(self) -> None:
        parent, child = _CONTEXT.Pipe()
        process = _CONTEXT.Process(target=_wait_for_call, args=(child,), daemon=True,
                                   name="inference-memory-probe")
        with self._lock:
            process.start()
            self._starting = process
            if self._pauses:
                _signal(process, signal.SIGSTOP)
        child.close()
        try:
            ready = self._ready(parent) and parent.recv() == "ready"
        except EOFError:
            ready = False
        with self._lock:
            self._warming, self._starting = None, None
            keep = ready and not self._closed
            if keep:
                self._spare = (process, parent)
        if not keep:
            if not ready and not self._closed:
                log.warning("a spare TensorFlow process did not start; probes spawn their own")
            process.kill()
            process.join(5)

    def _ready(self, parent: Connection) -> bool:
        """Whether the process said it is ready within SPARE_START_S of running time (the
        time it spent stopped does not count)."""
        running_s = 0.0
        while running_s < SPARE_START_S:
            if parent.poll(_POLL_S):
                return True
            with self._lock:
                running_s += 0.0 if self._pauses else _POLL_S
        return False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """While the block runs (a measurement), a spare still importing TensorFlow is
        stopped, and continued after: SIGSTOP, so it takes no CPU beside the timing."""
        with self._lock:
            self._pauses += 1
            if self._pauses == 1 and self._starting is not None:
                _signal(self._starting, signal.SIGSTOP)
        try:
            yield
        finally:
            with self._lock:
                self._pauses -= 1
                if self._pauses == 0 and self._starting is not None:
                    _signal(self._starting, signal.SIGCONT)

    def wait_ready(self) -> None:
        with self._lock:
            warming = self._warming
        if warming is not None:
            warming.join()

    def take(self) -> tuple[multiprocessing.process.BaseProcess, Connection] | None:
        """The spare once ready; None (the caller spawns its own) if it is stopped by a
        measurement, which waiting for it would never see the end of."""
        with self._lock:
            paused = self._pauses > 0
        if not paused:
            self.wait_ready()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and not spare[0].is_alive():
            return None
        return spare

    def close(self) -> None:
        """Kills the spare, and one still importing (no wait for it)."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
            if self._starting is not None:
                self._starting.kill()  # stopped or not, SIGKILL ends it
        if spare is not None:
            spare[0].kill()
            spare[0].join(5)


def _signal(process: multiprocessing.process.BaseProcess, signum: int) -> None:
    if process.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def _start(function: Callable[..., Any], args: tuple[Any, ...], name: str, quiet: bool,
           spare: SpareProcess | None) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    """A process running function(*args): the spare if one is ready, else a new one."""
    taken = spare.take() if spare is not None and not quiet else None
    if taken is not None:
        taken[1].send((function, args))
        return taken
    parent, child = _CONTEXT.Pipe()
    process = _CONTEXT.Process(target=_run_once, args=(child, function, args, quiet),
                               daemon=True, name=name)
    process.start()
    child.close()
    return process, parent


def call_in_fresh_process(function: Callable[..., Any], args: tuple[Any, ...], *, name: str,
                          timeout_s: float, task: str, likely_cause: str = "",
                          abort: threading.Event | None = None, quiet: bool = False,
                          spare: SpareProcess | None = None) -> Any:
    """`function(*args)` in a fresh (spawned) process, so that an untrusted model that crashes
    or exhausts TensorFlow takes down only that process. Its domain errors are raised here;
    its death is an InvalidArgument naming the `task` (a noun phrase: "the memory probe");
    Cancelled when `abort` is set. `quiet`: its stdout and stderr go to /dev/null. `spare`:
    use its waiting process (and start the next one afterwards)."""
    process, parent = _start(function, args, name, quiet, spare)
    try:
        deadline = time.monotonic() + timeout_s
        while not parent.poll(_POLL_S):
            if abort is not None and abort.is_set():
                raise errors.Cancelled(f"{task} was cancelled by its caller")
            if time.monotonic() > deadline:
                raise errors.InvalidArgument(f"{task} took longer than {timeout_s:.0f} s")
        status, value = parent.recv()
    except EOFError:
        process.join(5)
        cause = f"; {likely_cause}" if likely_cause else ""
        raise errors.InvalidArgument(
            f"the model's process died during {task} (exit code {process.exitcode}){cause}"
        ) from None
    finally:
        if process.is_alive():
            process.terminate()
        process.join(5)
        if spare is not None:
            spare.prepare()
    if status == "error":
        _raise(*value)
    return value
