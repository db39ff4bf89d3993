"""The one server bootstrap of all three services: options, error mapping, request metrics,
health, reflection, graceful shutdown (the /metrics endpoint included: see telemetry.py). Each
service's server.py only says which servicers to register."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.auth import Role
from services.common.interceptors import AuthInterceptor, DrainInterceptor, ErrorInterceptor
from services.common.telemetry import (
    GrpcMetricsInterceptor,
    initialize_grpc_metrics,
)
from services.common.transport import ServerSecurity
from services.core.channel import message_options
from services.core.errors import InvalidArgument

log = logging.getLogger(__name__)

# glibc gives each thread that allocates an arena of its own (up to 8 per core) and keeps in it
# what the thread frees: a server whose many threads pass 11-33 MB messages grows by tens of
# MiB. Two arenas, measured on inference over 60 job-like call sequences from 2 clients: peak
# 336 MiB instead of 394, resident 295-305 MiB instead of 330-368.
MALLOC_ARENAS = 2
# After its last call of a drain, how long a stopping server keeps its connections open for
# the clients to read their answers (a 2040x1284 float32 output is 31 MB).
ANSWER_READ_S = 1.0
_M_ARENA_MAX = -8  # malloc.h


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Before the server's threads exist: arenas made earlier are kept. Not glibc: its
    allocator keeps its own policy."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas)


# Clients' keepalive pings (core/channel.py) accepted every 5 s (twice their rate, for timer
# slack), with or without a call open.
SERVER_KEEPALIVE = [("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                    ("grpc.keepalive_permit_without_calls", 1)]


@dataclass(frozen=True)
class ConnectionAge:
    """How long a client connection lives: after `age_s` the server asks the client to
    reconnect (GOAWAY), so that new replicas receive load. A call in flight then is cut only
    after `grace_s`; None (the default) lets it finish however long it takes, since a timing of
    a slow model or a watch of a long job may last far longer than any fixed grace."""

    age_s: float = 300.0
    grace_s: float | None = None

    def options(self) -> list[tuple[str, int]]:
        options = [("grpc.max_connection_age_ms", int(self.age_s * 1000))]
        if self.grace_s is not None:
            options.append(("grpc.max_connection_age_grace_ms", int(self.grace_s * 1000)))
        return options

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ConnectionAge:
        return cls(args.max_connection_age_s, args.connection_age_grace_s)


@dataclass
class ServiceBinding:
    """A servicer and the function that adds it to a server, under its full proto name."""

    full_name: str
    add_to_server: Callable[[Any, grpc.Server], None]
    servicer: Any
    # Methods answered while the server drains too (readiness probes: they then say "not
    # ready", where any other call is refused with UNAVAILABLE).
    probes: tuple[str, ...] = ()


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: list[str]
    calls: DrainInterceptor
    on_drain: list[Callable[[], None]] = field(default_factory=list)  # when stop() begins
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    _stopped: threading.Event = field(default_factory=threading.Event)

    def mark_serving(self) -> None:
        """Called once the service can really serve (models warm, store open)."""
        for name in ["", *self.service_names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within `grace` seconds, then release
        (grace None: cancel them now)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.calls.refuse_new_calls()  # before health says so: a client that saw it may retry
        for callback in self.on_drain:
            callback()
        self.health.enter_graceful_shutdown()
        if grace is not None:
            deadline = time.monotonic() + grace
            last_end = self.calls.wait_idle(grace)
            # The last answers' bytes may still be on their way to their clients.
            time.sleep(max(0.0, min(last_end + ANSWER_READ_S, deadline) - time.monotonic()))
            grace = max(0.0, deadline - time.monotonic())
        self.server.stop(grace).wait()
        for callback in self.on_stop:
            callback()


def create_server(
    address: str,
    bindings: list[ServiceBinding],
    max_message_mb: int,
    workers: int = 8,
    security: ServerSecurity | None = None,
    connections: ConnectionAge | None = None,
) -> RunningServer:
    """Builds and binds a server (port 0 picks a free one) that is not yet marked SERVING.
    Without `security`, authentication is disabled and only a loopback address is allowed."""
    security = security or ServerSecurity()
    security.check_address(address)
    limit_malloc_arenas()
    options = [*message_options(max_message_mb), *(connections or ConnectionAge()).options(),
               *SERVER_KEEPALIVE]
    calls = DrainInterceptor(bindings[0].full_name, frozenset(
        f"/{b.full_name}/{method}" for b in bindings for method in b.probes))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        # The metrics interceptor comes first (outermost): it sees the mapped status codes,
        # those of refused tokens and of calls refused while draining included.
        interceptors=[GrpcMetricsInterceptor(), ErrorInterceptor(), calls,
                      AuthInterceptor(security.tokens, security.roles)],
        options=options,
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    # The server as a whole ("", what `pirm up` and liveness ask) too is SERVING only once
    # mark_serving says so: grpc's default says SERVING from the start.
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [b.full_name for b in bindings]
    initialize_grpc_metrics(names)
    for binding in bindings:
        binding.add_to_server(binding.servicer, server)
        health_servicer.set(binding.full_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME],
        server,
    )
    if security.tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, security.tls.credentials())
    if port == 0:
        raise OSError(f"could not bind {address}")
    server.start()
    log.info("listening", extra={
        "address": address, "port": port, "services": names,
        "authentication": "tokens" if security.tokens else "disabled (--insecure-dev)",
        "tls": "off" if security.tls is None else
               "mutual" if security.tls.client_ca else "server"})
    return RunningServer(server, port, health_servicer, names, calls)


def server_security(args: argparse.Namespace, roles: frozenset[Role]) -> ServerSecurity:
    """The security flags of a server's command line (config.add_security_flags); a wrong
    combination stops the program with the reason."""
    try:
        return ServerSecurity.from_args(args, roles)
    except InvalidArgument as error:
        raise SystemExit(f"error: {error}") from None


def serve_until_signalled(start: Callable[[], RunningServer], grace: float,
                          stop_metrics: Callable[[], None] | None = None) -> None:
    """Starts the server with `start` and serves until SIGTERM/SIGINT, then drains in-flight
    calls within `grace` seconds and stops the metrics endpoint (telemetry.py). The handlers
    come first: the server listens seconds before it is SERVING (the inference service starts
    its worker), and a signal in that time must drain its calls too, not kill them."""
    signalled = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name, "grace": grace})
        signalled.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = start()
    if stop_metrics is not None:
        running.on_stop.append(stop_metrics)
    running.mark_serving()
    while not signalled.wait(timeout=1.0):  # a timeout keeps the main thread's handlers running
        pass
    running.stop(grace)
