"""gRPC clients of the inference and metrics services, as the scorer's backends.

Every call has a deadline; UNAVAILABLE is retried with exponential backoff; any other status
becomes the domain error of the same code, so that a job fails with the service's own message.

Several endpoints of a service form a pool used round-robin (client-side load balancing: gRPC
keeps one long-lived HTTP/2 connection per endpoint, so a Kubernetes Service's connection-level
balancing would pin the scorer to one pod). An endpoint that stays UNAVAILABLE is skipped for
the next one. `dns:///name:port` stands for every address the name resolves to (a headless
Service: one per pod), resolved again at each job's start so that new pods are used.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
from pirm.v1 import common_pb2, inference_pb2, inference_pb2_grpc, metrics_pb2, metrics_pb2_grpc

from services.core import errors
from services.core.channel import ChannelSecurity, open_channel
from services.core.quality import PairQuality, QualityOptions
from services.core.tensors import from_tensor, to_tensor
from services.core.timing import DeviceTiming, RuntimeComparison, TimingOptions
from services.core.wire import (
    quality_options_message,
    stopping_from_proto,
    timing_from_proto,
    timing_options_message,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
C = TypeVar("C", "InferenceClient", "MetricsClient")
DNS_PREFIX = "dns:///"
# An endpoint that stayed UNAVAILABLE is tried last for this long, so that a dead replica does
# not cost every other call its retries.
DOWN_FOR_S = 10.0
# When every endpoint of a service is down (a killed pod, restarted by its supervisor or
# Kubernetes), a call waits this long for one to come back before its job fails.
OUTAGE_S = 90.0

_ERRORS: dict[grpc.StatusCode, type[errors.PirmError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}
# A timing lost after its server began it (its server killed or restarted, its connection cut)
# is started again at most LONG_CALL_STARTS times in all, then its job fails; one refused
# before it began (a server down or draining) is retried as any call.
LONG_CALL_STARTS = 2
# The inference service's first answer to a Benchmark call, before the work (servicer.py).
WORK_STARTED = ("pirm-work", "started")


class WorkLost(errors.Unavailable):
    """A call lost (UNAVAILABLE) after its server had begun the work."""


def call_with_retry(
    service: str, call: Callable[[], T], attempts: int = 5, first_backoff_s: float = 0.2
) -> T:
    """`call` with UNAVAILABLE retried after 0.2, 0.4, 0.8 ... s; other statuses raised at once
    as the domain error of the same code. The message names the service, not its address: a
    job's error is read by its team."""
    for attempt in range(attempts):
        try:
            return call()
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                time.sleep(first_backoff_s * 2**attempt)
                continue
            kind = _ERRORS.get(code, errors.PirmError)
            details = error.details()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                details = "no answer within the call's deadline"
            raise kind(f"{service}: {details}") from error
    raise AssertionError("unreachable")


class InferenceClient:
    """One inference endpoint."""

    service = "inference"

    def __init__(self, target: str, max_message_mb: int, deadline_s: float = 600.0,
                 attempts: int = 5, security: ChannelSecurity | None = None) -> None:
        self.target = target
        self._channel = open_channel(target, max_message_mb, security)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)
        self._deadline = deadline_s
        self._attempts = attempts

    def load_model(
        self, name: str, graph_def: bytes | None, repository_model: str,
        input_tensor: str, output_tensor: str,
    ) -> str:
        request = inference_pb2.LoadModelRequest(
            name=name, input_tensor=input_tensor, output_tensor=output_tensor
        )
        if repository_model:
            repo_name, _, version = repository_model.partition("/")
            request.repository.CopyFrom(inference_pb2.RepositoryModel(name=repo_name,
                                                                      version=version))
        else:
            request.graph_def = graph_def or b""
        response = self._call(lambda: self._stub.LoadModel(request, timeout=self._deadline))
        return response.model.name

    def unload_model(self, name: str) -> None:
        """Frees the model on this endpoint; one it does not hold is no error."""
        request = inference_pb2.UnloadModelRequest(name=name)
        with contextlib.suppress(errors.NotFound):
            self._call(lambda: self._stub.UnloadModel(request, timeout=self._deadline))

    def infer(self, model: str, image: np.ndarray) -> np.ndarray:
        request = inference_pb2.InferRequest(model=model, input=to_tensor(image))
        response = self._call(lambda: self._stub.Infer(request, timeout=self._deadline))
        return from_tensor(response.output, "model output")

    def benchmark(self, model: str, image: np.ndarray, options: TimingOptions,
                  measure_memory: bool = False, abort: threading.Event | None = None,
                  deadline_s: float | None = None,
                  probes: list[np.ndarray] | None = None) -> DeviceTiming:
        response = self._benchmark(model, "", image, options, measure_memory, abort,
                                   deadline_s, probes)
        return timing_from_proto(response.timing)

    def measure_memory(self, model: str, image: np.ndarray) -> tuple[float, bool]:
        request = inference_pb2.MeasureMemoryRequest(model=model, input=to_tensor(image))
        response = self._call(lambda: self._stub.MeasureMemory(request, timeout=self._deadline))
        return response.peak_memory_mb, response.reused

    def compare(self, model: str, baseline: str, image: np.ndarray, options: TimingOptions,
                measure_memory: bool = False, abort: threading.Event | None = None,
                deadline_s: float | None = None,
                probes: list[np.ndarray] | None = None) -> RuntimeComparison:
        response = self._benchmark(model, baseline, image, options, measure_memory, abort,
                                   deadline_s, probes)
        return RuntimeComparison(
            solution=timing_from_proto(response.timing),
            baseline=timing_from_proto(response.baseline_timing),
            speed_ratio=response.speed_ratio,
            ratio_ci95_low=response.speed_ratio_ci95_low,
            ratio_ci95_high=response.speed_ratio_ci95_high,
            stopping=stopping_from_proto(response.stopping),
        )

    def _benchmark(self, model: str, baseline: str, image: np.ndarray, options: TimingOptions,
                   measure_memory: bool, abort: threading.Event | None,
                   deadline_s: float | None, probes: list[np.ndarray] | None
                   ) -> inference_pb2.BenchmarkResponse:
        """A timing lasts as long as its model needs (minutes for a slow one): its deadline is
        the caller's `deadline_s` (a job's remaining time), not the calls' fixed one; and it
        is not retried here (EndpointPool.long_call decides)."""
        request = inference_pb2.BenchmarkRequest(
            model=model,
            baseline_model=baseline,
            input=to_tensor(image),
            device=common_pb2.DEVICE_UNSPECIFIED,
            options=timing_options_message(options),
            measure_memory=measure_memory,
            check_timing_input=probes is not None,
            probes=[to_tensor(probe) for probe in probes or ()],
        )
        timeout = self._deadline if deadline_s is None else deadline_s

        def call() -> inference_pb2.BenchmarkResponse:
            future = self._stub.Benchmark.future(request, timeout=timeout)
            try:
                return _abortable(future, abort)
            except grpc.RpcError as error:
                if (error.code() == grpc.StatusCode.UNAVAILABLE
                        and WORK_STARTED in (future.initial_metadata() or ())):
                    raise WorkLost(f"inference: {error.details()}") from error
                raise

        return call_with_retry("inference", call, attempts=1)

    def _call(self, call: Callable[[], T]) -> T:
        return call_with_retry("inference", call, self._attempts)

    def close(self) -> None:
        self._channel.close()


class MetricsClient:
    """One metrics endpoint."""

    service = "metrics"

    def __init__(self, target: str, max_message_mb: int, deadline_s: float = 120.0,
                 attempts: int = 5, security: ChannelSecurity | None = None) -> None:
        self.target = target
        self._channel = open_channel(target, max_message_mb, security)
        self._stub = metrics_pb2_grpc.MetricsServiceStub(self._channel)
        self._deadline = deadline_s
        self._attempts = attempts

    def evaluate(
        self, output: np.ndarray, target: np.ndarray, options: QualityOptions
    ) -> PairQuality:
        request = metrics_pb2.EvaluateRequest(
            output=to_tensor(output),
            target=to_tensor(target),
            options=quality_options_message(options),
        )
        response = call_with_retry(
            "metrics", lambda: self._stub.Evaluate(request, timeout=self._deadline),
            self._attempts,
        )
        return PairQuality(psnr=response.psnr, msssim=response.msssim)

    def close(self) -> None:
        self._channel.close()


def resolve_targets(spec: str) -> list[str]:
    """'host:port,host:port,dns:///name:port' -> the endpoints, a dns:/// entry expanded to
    every address its name resolves to (a name that does not resolve is kept as it is: gRPC
    reports it UNAVAILABLE and the pool skips it)."""
    targets: list[str] = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        if not entry.startswith(DNS_PREFIX):
            targets.append(entry)
            continue
        host, _, port = entry.removeprefix(DNS_PREFIX).rpartition(":")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            targets.append(entry.removeprefix(DNS_PREFIX))
            continue
        addresses = sorted({str(info[4][0]) for info in infos})
        targets.extend(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses)
    return list(dict.fromkeys(targets))


class EndpointPool(Generic[C]):
    """The clients of one service's endpoints, handed out round-robin."""

    def __init__(self, spec: str, connect: Callable[[str], C], outage_s: float = OUTAGE_S
                 ) -> None:
        self._spec = spec
        self.outage_s = outage_s
        self._connect: Callable[[str], C] = connect
        self._lock = threading.Lock()
        self._clients: dict[str, C] = {}
        self._down_until: dict[str, float] = {}
        self._turn = itertools.count()
        self.refresh()

    def refresh(self) -> None:
        """Resolves the endpoints again: new ones are connected, vanished ones closed."""
        targets = resolve_targets(self._spec)
        if not targets:
            raise errors.InvalidArgument(f"no endpoints in {self._spec!r}")
        with self._lock:
            for target in set(self._clients) - set(targets):
                self._clients.pop(target).close()
            for target in targets:
                if target not in self._clients:
                    self._clients[target] = self._connect(target)

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._clients)

    def all(self) -> list[C]:
        with self._lock:
            return list(self._clients.values())

    def rotation(self) -> list[C]:
        """Every client, starting with the next one's turn, endpoints recently found down
        last: try them in this order."""
        clients = self.all()
        start = next(self._turn) % len(clients)
        turn = clients[start:] + clients[:start]
        now = time.monotonic()
        with self._lock:
            down = {t for t, until in self._down_until.items() if until > now}
        return [c for c in turn if c.target not in down] + [c for c in turn if c.target in down]

    def first_available(self, call: Callable[[C], T]) -> T:
        """call(client) on the clients in rotation until one is not UNAVAILABLE; when all
        are, again every second for up to `outage_s` (a restarting service)."""
        give_up = time.monotonic() + self.outage_s
        while True:
            failure: errors.Unavailable | None = None
            for client in self.rotation():
                try:
                    result = call(client)
                except errors.Unavailable as error:
                    failure = error
                    self._mark_down(client, error)
                    continue
                self._mark_up(client)
                return result
            assert failure is not None
            if time.monotonic() >= give_up:
                raise errors.Unavailable(
                    f"{failure} (no endpoint answered for {self.outage_s:.0f} s)") from failure
            time.sleep(1.0)

    def long_call(self, what: str, call: Callable[[C], T]) -> T:
        """first_available for work that takes long (a timing): started again after a loss
        (WorkLost: its endpoint killed or restarted mid-call) only LONG_CALL_STARTS times in
        all, so that a job either progresses or fails with the reason, never repeats it
        forever."""
        losses: list[str] = []

        def once(client: C) -> T:
            try:
                return call(client)
            except WorkLost as error:
                losses.append(str(error))
                log.warning("long call lost", extra={"call": what, "endpoint": client.target,
                                                     "error": str(error),
                                                     "starts": len(losses)})
                if len(losses) >= LONG_CALL_STARTS:
                    raise errors.Aborted(
                        f"{what} was lost {len(losses)} times after it had started (its "
                        f"inference node went away; last: {error}); it is not started again"
                    ) from error
                raise

        return self.first_available(once)

    def _mark_down(self, client: C, error: errors.Unavailable) -> None:
        """Tried last for DOWN_FOR_S; logged when it goes out of use, not at each failure."""
        with self._lock:
            newly = client.target not in self._down_until
            self._down_until[client.target] = time.monotonic() + DOWN_FOR_S
        if newly:
            log.warning("endpoint out of use", extra={
                "service": client.service, "endpoint": client.target, "status": error.status,
                "reason": str(error), "tried_last_for_s": DOWN_FOR_S})

    def _mark_up(self, client: C) -> None:
        with self._lock:
            back = self._down_until.pop(client.target, None) is not None
        if back:
            log.info("endpoint back in use",
                     extra={"service": client.service, "endpoint": client.target})

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


class InferencePool:
    """The scorer's inference backend over one or several endpoints.

    A model is loaded on every endpoint (so that any of them can infer it) and again, lazily, on
    an endpoint that joined later or lost it in a restart; a runtime comparison runs on one
    endpoint, which holds both of its models."""

    def __init__(self, spec: str, max_message_mb: int, attempts: int = 3,
                 security: ChannelSecurity | None = None) -> None:
        self._pool: EndpointPool[InferenceClient] = EndpointPool(spec, lambda target: (
            InferenceClient(target, max_message_mb, attempts=attempts, security=security)))
        self._lock = threading.Lock()
        self._sources: dict[str, tuple[bytes | None, str, str, str]] = {}
        self._loaded: set[tuple[str, str]] = set()  # (endpoint, model)
        self._last_used: dict[str, float] = {}  # model -> time.monotonic() of its last call

    @property
    def parallelism(self) -> int:
        return self._pool.size

    def refresh(self) -> None:
        self._pool.refresh()

    def load_model(
        self, name: str, graph_def: bytes | None, repository_model: str,
        input_tensor: str, output_tensor: str,
    ) -> str:
        """Loads on every endpoint at once; refused if any endpoint refuses the model (a bad
        graph), accepted if at least one endpoint has it."""
        with self._lock:
            self._sources[name] = (graph_def, repository_model, input_tensor, output_tensor)
        clients = self._pool.all()
        with ThreadPoolExecutor(len(clients)) as loaders:
            outcomes = list(loaders.map(lambda c: _outcome(lambda: self._ensure(c, name)),
                                        clients))
        failures = [error for error in outcomes if error is not None]
        refusals = [error for error in failures if not isinstance(error, errors.Unavailable)]
        if refusals:
            raise refusals[0]
        if len(failures) == len(outcomes):
            raise failures[0]  # every endpoint is unavailable
        return name

    def infer(self, model: str, image: np.ndarray) -> np.ndarray:
        return self._pool.first_available(
            lambda client: self._reloading(client, lambda: client.infer(model, image), model))

    def benchmark(self, model: str, image: np.ndarray, options: TimingOptions,
                  measure_memory: bool = False, abort: threading.Event | None = None,
                  deadline_s: float | None = None,
                  probes: list[np.ndarray] | None = None) -> DeviceTiming:
        return self._pool.long_call("the timing", lambda client: self._reloading(
            client, lambda: client.benchmark(model, image, options, measure_memory, abort,
                                             deadline_s, probes),
            model))

    def compare(self, model: str, baseline: str, image: np.ndarray, options: TimingOptions,
                measure_memory: bool = False, abort: threading.Event | None = None,
                deadline_s: float | None = None,
                probes: list[np.ndarray] | None = None) -> RuntimeComparison:
        return self._pool.long_call("the timing", lambda client: self._reloading(
            client, lambda: client.compare(model, baseline, image, options, measure_memory,
                                           abort, deadline_s, probes),
            model, baseline))

    def measure_memory(self, model: str, image: np.ndarray) -> tuple[float, bool]:
        """On every endpoint, at once: the timing may run on any of them."""
        clients = self._pool.all()
        with ThreadPoolExecutor(len(clients)) as probes:
            outcomes = list(probes.map(lambda client: self._reloading(
                client, lambda: client.measure_memory(model, image), model), clients))
        return max(peak for peak, _ in outcomes), all(reused for _, reused in outcomes)

    def release(self, name: str) -> None:
        """Unloads the model from every endpoint holding it (its memory, its Prometheus
        series). Its bytes stay known: a later call loads it again."""
        with self._lock:
            targets = {target for target, model in self._loaded if model == name}
            self._loaded -= {(target, name) for target in targets}
        for client in self._pool.all():
            if client.target in targets:
                _outcome(functools.partial(client.unload_model, name))  # best effort

    def forget_idle(self, keep: set[str], idle_s: float) -> list[str]:
        """Releases and forgets the models not in `keep` that no call used for `idle_s`
        (what a refused submission or a report's crops loaded); returns their names."""
        now = time.monotonic()
        with self._lock:
            idle = [name for name in self._sources
                    if name not in keep and now - self._last_used.get(name, 0.0) > idle_s]
        for name in idle:
            self.release(name)
            with self._lock:
                if now - self._last_used.get(name, 0.0) > idle_s:  # not used meanwhile
                    self._sources.pop(name, None)
                    self._last_used.pop(name, None)
        return idle

    def close(self) -> None:
        self._pool.close()

    def _reloading(self, client: InferenceClient, call: Callable[[], T], *models: str) -> T:
        """call() with the models loaded on the client's endpoint first; once more after
        reloading them if the endpoint lost them (a restarted inference server)."""
        for model in models:
            self._ensure(client, model)
        try:
            return call()
        except errors.NotFound:
            with self._lock:
                self._loaded -= {(client.target, model) for model in models}
            for model in models:
                self._ensure(client, model)
            return call()

    def _ensure(self, client: InferenceClient, model: str) -> None:
        with self._lock:
            self._last_used[model] = time.monotonic()
            if (client.target, model) in self._loaded:
                return
            if model not in self._sources:
                raise errors.NotFound(f"model {model!r} was never loaded through this scorer")
            graph_def, repository_model, input_tensor, output_tensor = self._sources[model]
        client.load_model(model, graph_def, repository_model, input_tensor, output_tensor)
        with self._lock:
            self._loaded.add((client.target, model))


class MetricsPool:
    """The scorer's metrics backend over one or several endpoints, round-robin."""

    def __init__(self, spec: str, max_message_mb: int, attempts: int = 3,
                 security: ChannelSecurity | None = None) -> None:
        self._pool: EndpointPool[MetricsClient] = EndpointPool(spec, lambda target: (
            MetricsClient(target, max_message_mb, attempts=attempts, security=security)))

    @property
    def parallelism(self) -> int:
        return self._pool.size

    def refresh(self) -> None:
        self._pool.refresh()

    def evaluate(
        self, output: np.ndarray, target: np.ndarray, options: QualityOptions
    ) -> PairQuality:
        return self._pool.first_available(lambda client: client.evaluate(output, target, options))

    def close(self) -> None:
        self._pool.close()


def _abortable(call: grpc.Future, abort: threading.Event | None, poll_s: float = 0.2) -> Any:
    """The call's response; if `abort` is set first, the call is cancelled (the server stops
    its work) and Cancelled raised."""
    while True:
        try:
            return call.result(timeout=poll_s)
        except grpc.FutureTimeoutError:
            if abort is not None and abort.is_set():
                call.cancel()
                raise errors.Cancelled("the call was cancelled: its job was cancelled") from None


def _outcome(call: Callable[[], object]) -> errors.PirmError | None:
    try:
        call()
    except errors.PirmError as error:
        return error
    return None
