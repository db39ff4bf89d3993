"""Prometheus metrics every service has: gRPC requests (one interceptor for the three services)
and the HTTP endpoint Prometheus scrapes.

Every service is one process, scraped as its own target; a service scaled out on Kubernetes is
one target per pod. Its endpoint serves prometheus-client's default registry (the gRPC metrics
below and the process_* and python_* ones) together with the registry of its own telemetry
module, so that a process exports its own service's metrics only (the scorer imports the
metrics library, for instance). Helper processes (the inference workers) report their results
to the server process, which records them, so no multiprocess mode is needed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import grpc
import prometheus_client
from google.protobuf import descriptor_pool
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.common.interceptors import Behavior, HandlerInterceptor, wrapped_in

log = logging.getLogger(__name__)

# Request latencies range from a health check to a job watched for an hour.
GRPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
                900, 3600)
# The names and labels of go-grpc-prometheus / py-grpc-prometheus, so that existing gRPC
# dashboards and alerts work too.
_RPC = ["grpc_type", "grpc_service", "grpc_method"]
GRPC_STARTED = Counter("grpc_server_started", "RPCs started on the server.", _RPC)
GRPC_HANDLED = Counter("grpc_server_handled", "RPCs completed on the server, by status code.",
                       [*_RPC, "grpc_code"])
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds", "Time from the start of an RPC to its status.",
    [*_RPC, "grpc_code"], buckets=GRPC_BUCKETS,
)
GRPC_IN_FLIGHT = Gauge("grpc_server_requests_in_flight", "RPCs being handled now.", _RPC)

RPC_TYPES = {"unary_unary": "unary", "unary_stream": "server_stream",
             "stream_unary": "client_stream", "stream_stream": "bidi_stream"}


def rpc_labels(method: str, kind: str) -> tuple[str, str, str]:
    """('unary', 'pirm.v1.ScorerService', 'SubmitJob') for '/pirm.v1.ScorerService/SubmitJob'."""
    service, _, name = method.lstrip("/").rpartition("/")
    return RPC_TYPES[kind], service, name


class GrpcMetricsInterceptor(HandlerInterceptor):
    """Counts every RPC by method and final status code and times it. Installed outside the
    error interceptor, so that it sees the status that domain errors were mapped to."""

    def wrap(self, behavior: Behavior, method: str, kind: str, streams_response: bool
             ) -> Behavior:
        labels = rpc_labels(method, kind)
        return wrapped_in(lambda context: _observed(labels, context), behavior, streams_response)


@contextlib.contextmanager
def _observed(labels: tuple[str, str, str], context: grpc.ServicerContext) -> Iterator[None]:
    GRPC_STARTED.labels(*labels).inc()
    in_flight = GRPC_IN_FLIGHT.labels(*labels)
    in_flight.inc()
    start = time.perf_counter()
    code = grpc.StatusCode.UNKNOWN
    try:
        yield
        code = _status(context, grpc.StatusCode.OK)
    except GeneratorExit:  # the client went away in the middle of a stream
        code = grpc.StatusCode.CANCELLED
        raise
    except BaseException:
        code = _status(context, grpc.StatusCode.UNKNOWN)
        raise
    finally:
        in_flight.dec()
        GRPC_HANDLED.labels(*labels, code.name).inc()
        GRPC_HANDLING_SECONDS.labels(*labels, code.name).observe(time.perf_counter() - start)


def _status(context: grpc.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    """The code the handler set or aborted with, else `default`."""
    code = context.code()  # type: ignore[attr-defined]
    return code if isinstance(code, grpc.StatusCode) else default


def initialize_grpc_metrics(service_names: list[str]) -> None:
    """Creates every method's series at zero (OK code), so that rate() and increase() count a
    method's first calls too: Prometheus takes a series that appears already at 1 as its start."""
    pool = descriptor_pool.Default()
    for service_name in service_names:
        for method in pool.FindServiceByName(service_name).methods:
            kind = (f"{'stream' if method.client_streaming else 'unary'}_"
                    f"{'stream' if method.server_streaming else 'unary'}")
            labels = rpc_labels(f"/{service_name}/{method.name}", kind)
            GRPC_STARTED.labels(*labels)
            GRPC_IN_FLIGHT.labels(*labels)
            GRPC_HANDLED.labels(*labels, "OK")
            GRPC_HANDLING_SECONDS.labels(*labels, "OK")


def exported_registry(service_metrics: CollectorRegistry) -> CollectorRegistry:
    """What a service's endpoint serves: the process-wide metrics and the service's own."""
    exported = CollectorRegistry(auto_describe=True)
    exported.register(prometheus_client.REGISTRY)
    exported.register(service_metrics)
    return exported


def start_metrics_endpoint(host: str, port: int, service_metrics: CollectorRegistry
                           ) -> Callable[[], None] | None:
    """Serves http://host:port/metrics (port 0: nothing) with the service's own metrics;
    returns what stops it. A service's main calls it before the server reports SERVING, and
    only there: servers started side by side in one process (tests) would share a registry."""
    if port == 0:
        return None
    server, thread = start_http_server(port, addr=host, registry=exported_registry(service_metrics))
    log.info("metrics endpoint", extra={"address": host, "port": port})

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
