"""How any client reaches our servers: message limits, keepalive, TLS (mutual when the client
presents a certificate) and a bearer token, configured by file paths and flags. Servers'
own side is services/common/transport.py."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.core.errors import InvalidArgument
from services.core.limits import MIB

log = logging.getLogger(__name__)
AUTHORIZATION = "authorization"
BEARER = "Bearer "


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0]


def read_file(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidArgument(f"cannot read the {what} {path}: {error.strerror}") from None


@dataclass(frozen=True)
class ChannelSecurity:
    """What a client presents: a bearer token, and TLS roots (plus its own certificate for
    mutual TLS). Nothing given: a plain channel."""

    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Tests and local clusters reach 127.0.0.1 with a certificate issued to a name.
    server_name: str | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls_ca is not None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=read_file(self.tls_ca, "TLS CA"),
            private_key=read_file(self.tls_key, "TLS client key"),
            certificate_chain=read_file(self.tls_cert, "TLS client certificate"),
        )

    def with_token(self, token: str | None) -> ChannelSecurity:
        return ChannelSecurity(token, self.tls_ca, self.tls_cert, self.tls_key, self.server_name)

    @classmethod
    def from_args(cls, args: argparse.Namespace, token: str | None) -> ChannelSecurity:
        if bool(args.tls_client_cert) != bool(args.tls_client_key):
            raise InvalidArgument("a client certificate needs both --tls-client-cert and "
                                  "--tls-client-key")
        if args.tls_client_cert and not args.tls_ca:
            raise InvalidArgument("--tls-client-cert (mutual TLS) needs --tls-ca")
        return cls(token, args.tls_ca, args.tls_client_cert, args.tls_client_key,
                   args.tls_server_name or None)


def secure(channel_options: list[tuple[str, Any]], target: str,
           security: ChannelSecurity) -> grpc.Channel:
    """A channel to `target` with the TLS and token of `security`."""
    if security.uses_tls:
        options = list(channel_options)
        if security.server_name:
            options.append(("grpc.ssl_target_name_override", security.server_name))
        channel = grpc.secure_channel(target, security.credentials(), options=options)
    else:
        channel = grpc.insecure_channel(target, options=channel_options)
        if security.token and not is_loopback(host_of(target.removeprefix("dns:///"))):
            log.warning("sending a bearer token without TLS", extra={"target": target})
    if not security.token:
        return channel
    return grpc.intercept_channel(channel, BearerToken(security.token))


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: Any, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a channel. (gRPC's call
    credentials would refuse a plain channel, which loopback clusters use.)"""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, BEARER + token)

    def _with_token(self, continuation: Callable[..., Any], details: Any,
                    request: Any) -> Any:
        metadata = (*(details.metadata or ()), self._header)
        return continuation(_CallDetails(details, metadata), request)

    intercept_unary_unary = _with_token  # type: ignore[assignment]
    intercept_unary_stream = _with_token  # type: ignore[assignment]
    intercept_stream_unary = _with_token  # type: ignore[assignment]
    intercept_stream_stream = _with_token  # type: ignore[assignment]


def message_options(max_message_mb: int) -> list[tuple[str, int]]:
    """Message limits for servers and channels alike: the 4 MiB default rejects HD images."""
    limit = max_message_mb * MIB
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


# A peer whose host is cut off drops packets instead of refusing them: a call to it would wait
# for its deadline (inference: 600 s). Our channels ping every 10 s, during calls that send
# nothing for minutes too (a timing), and close a connection whose ping is not answered within
# 5 s, failing its calls with UNAVAILABLE; our servers accept pings that often
# (common/server.py's SERVER_KEEPALIVE), else they would answer GOAWAY "too_many_pings".
CHANNEL_KEEPALIVE = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                     ("grpc.keepalive_permit_without_calls", 1),
                     ("grpc.http2.max_pings_without_data", 0)]


def open_channel(target: str, max_message_mb: int, security: ChannelSecurity | None = None,
                 options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A channel with our message limits, keepalive (and further `options`), and TLS and a
    bearer token when `security` says."""
    return secure([*message_options(max_message_mb), *CHANNEL_KEEPALIVE, *(options or [])],
                  target, security or ChannelSecurity())
