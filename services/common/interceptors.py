"""The server interceptors every service has: one mechanism that wraps a method's behaviour
whatever its streaming kind, used by the error mapping here and by the metrics in telemetry.py."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import grpc

from services.common.auth import (
    DEVELOPER,
    Principal,
    Role,
    Tokens,
    require_role,
    reset_caller,
    set_caller,
)
from services.common.incidents import report_incident
from services.core.channel import AUTHORIZATION, BEARER
from services.core.errors import PirmError, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

Behavior = Callable[..., Any]
HEALTH_PREFIX = "/grpc.health.v1.Health/"  # probes carry no token

# The four kinds of gRPC method: the handler attribute holding the behaviour, the factory that
# rebuilds a handler around a wrapped behaviour, and whether the response is a stream.
_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


class HandlerInterceptor(grpc.ServerInterceptor):
    """Base of our interceptors: subclasses say how to wrap one method's behaviour."""

    passes_health = False  # True: health calls go through unwrapped

    def wrap(self, behavior: Behavior, method: str, kind: str, streams_response: bool
             ) -> Behavior:
        """Returns the behaviour to run instead; a streaming one must be a generator."""
        raise NotImplementedError

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or (self.passes_health and
                               handler_call_details.method.startswith(HEALTH_PREFIX)):
            return handler
        for kind, make_handler, streams_response in _KINDS:
            behavior = getattr(handler, kind)
            if behavior:
                return make_handler(
                    self.wrap(behavior, handler_call_details.method, kind, streams_response),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


def wrapped_in(scope: Callable[[grpc.ServicerContext], AbstractContextManager[Any]],
               behavior: Behavior, streams_response: bool) -> Behavior:
    """`behavior` run inside `scope(context)`: for a streamed response, around the whole
    stream (the generator's end or abandonment exits the scope)."""
    def scoped(request: Any, context: grpc.ServicerContext) -> Any:
        with scope(context):
            return behavior(request, context)

    def scoped_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with scope(context):
            yield from behavior(request, context)

    return scoped_stream if streams_response else scoped


class ErrorInterceptor(HandlerInterceptor):
    """Turns domain errors into their gRPC status, and anything unexpected into INTERNAL with
    an incident id only (incidents.py)."""

    def wrap(self, behavior: Behavior, method: str, kind: str, streams_response: bool
             ) -> Behavior:
        return _guard_stream(behavior, method) if streams_response else _guard_unary(
            behavior, method)


def _abort(context: grpc.ServicerContext, error: Exception, method: str) -> None:
    if isinstance(error, PirmError):
        if error.metadata():
            context.set_trailing_metadata(error.metadata())
        context.abort(grpc.StatusCode[error.status], str(error))
    if context.code() is not None:  # type: ignore[attr-defined]  # aborted by the servicer
        raise error
    context.abort(grpc.StatusCode.INTERNAL,
                  report_incident(log, "unhandled error", error, method=method))


def _guard_unary(behavior: Behavior, method: str) -> Behavior:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as error:  # noqa: BLE001 - every error must become a status
            _abort(context, error, method)

    return guarded


def _guard_stream(behavior: Callable[..., Iterator[Any]], method: str) -> Behavior:
    def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as error:  # noqa: BLE001
            _abort(context, error, method)

    return guarded


class DrainInterceptor(HandlerInterceptor):
    """Counts the calls in progress (health's and the readiness probes' aside) and, once the
    server drains, refuses new ones with UNAVAILABLE, which clients retry elsewhere. grpc's own
    stop closes a connection the moment its last call ends: a reset then could cost a client the
    unread end of a large response (seen under load), so the server closes only once every
    answer had time to be read (RunningServer.stop)."""

    passes_health = True

    def __init__(self, service: str, probes: frozenset[str] = frozenset()) -> None:
        self.service = service
        self.probes = probes  # full method names answered while draining too (readiness)
        self._changed = threading.Condition()
        self._calls = 0
        self._last_end = float("-inf")
        self._draining = False

    def refuse_new_calls(self) -> None:
        with self._changed:
            self._draining = True

    def wait_idle(self, timeout_s: float) -> float:
        """Waits up to `timeout_s` for the calls in progress to end; the monotonic time the
        last one ended (-inf if none did)."""
        with self._changed:
            self._changed.wait_for(lambda: self._calls == 0, timeout_s)
            return self._last_end

    def wrap(self, behavior: Behavior, method: str, kind: str, streams_response: bool
             ) -> Behavior:
        if method in self.probes:
            return behavior
        return wrapped_in(self._counted, behavior, streams_response)

    @contextlib.contextmanager
    def _counted(self, _context: grpc.ServicerContext) -> Iterator[None]:
        with self._changed:
            if self._draining:
                raise Unavailable(f"the {self.service} server is shutting down: retry the call "
                                  "(another replica, or this one once restarted, will answer)")
            self._calls += 1
        try:
            yield
        finally:
            with self._changed:
                self._calls -= 1
                self._last_end = time.monotonic()
                self._changed.notify_all()


class AuthInterceptor(HandlerInterceptor):
    """Every method but health needs `authorization: Bearer <token>` of a role this service
    serves; the handler finds the caller in auth.caller(). Without tokens (--insecure-dev),
    every caller is auth.DEVELOPER."""

    passes_health = True

    def __init__(self, tokens: Tokens | None, roles: frozenset[Role]) -> None:
        self.tokens = tokens
        self.roles = roles

    def wrap(self, behavior: Behavior, method: str, kind: str, streams_response: bool
             ) -> Behavior:
        @contextlib.contextmanager
        def authenticated(context: grpc.ServicerContext) -> Iterator[None]:
            token = set_caller(self.authenticate(context, method))
            try:
                yield
            finally:
                reset_caller(token)

        return wrapped_in(authenticated, behavior, streams_response)

    def authenticate(self, context: grpc.ServicerContext, method: str) -> Principal:
        if self.tokens is None:
            return DEVELOPER
        headers = [value for key, value in context.invocation_metadata()
                   if key == AUTHORIZATION]
        if not headers or not str(headers[0]).startswith(BEARER):
            raise Unauthenticated(
                f"{method} needs a bearer token: pass --token or set PIRM_TOKEN (metadata "
                "`authorization: Bearer <token>`)")
        principal = self.tokens.principal(str(headers[0])[len(BEARER):].strip())
        if principal is None:
            log.warning("unknown token", extra={"method": method, "peer": context.peer()})
            raise Unauthenticated("this token is not known here: check it with the organisers")
        require_role(principal, self.roles, method)
        return principal
