"""How a server listens and a client connects: TLS (mutual when the server names a client CA)
and bearer tokens, all configured by file paths and flags (config.py)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.common.auth import Role, Tokens, load_tokens
from services.common.errors import InvalidArgument

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


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidArgument(f"cannot read the {what} {path}: {error.strerror}") from None


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    client_ca: Path | None = None  # given: clients must present a certificate it signed

    def credentials(self) -> grpc.ServerCredentials:
        key, cert = _read(self.key, "TLS key"), _read(self.cert, "TLS certificate")
        assert key is not None and cert is not None
        client_ca = _read(self.client_ca, "client CA")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)


@dataclass(frozen=True)
class ServerSecurity:
    """Who may call a server, over what. No tokens means authentication disabled, which
    only a loopback address may have (`--insecure-dev`)."""

    tokens: Tokens | None = None
    roles: frozenset[Role] = frozenset(Role)  # the roles this service serves
    tls: ServerTls | None = None

    def check_address(self, address: str) -> None:
        if self.tokens is None and not is_loopback(host_of(address)):
            raise InvalidArgument(
                f"authentication is disabled (--insecure-dev), so the server binds loopback "
                f"only, not {address}: give it a tokens file (--tokens-file) to listen there")

    @classmethod
    def from_args(cls, args: argparse.Namespace, roles: frozenset[Role]) -> ServerSecurity:
        tokens = load_tokens(args.tokens_file, args.tokens_inline)
        if tokens is None and not args.insecure_dev:
            raise InvalidArgument(
                "no tokens: give --tokens-file (or PIRM_TOKENS_FILE / PIRM_TOKENS) with "
                "`role name token` lines, or --insecure-dev to run without authentication on "
                "loopback only")
        if tokens is not None and args.insecure_dev:
            raise InvalidArgument("--insecure-dev disables authentication, yet tokens were "
                                  "given: choose one")
        if tokens is not None and not tokens.roles() & roles:
            served = ", ".join(sorted(r.value for r in roles))
            raise InvalidArgument(f"the tokens give no {served} caller: nobody could call "
                                  "this service")
        tls = None
        if args.tls_cert or args.tls_key:
            if not (args.tls_cert and args.tls_key):
                raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
            tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca)
        elif args.tls_client_ca:
            raise InvalidArgument("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        return cls(tokens, roles, tls)


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
            root_certificates=_read(self.tls_ca, "TLS CA"),
            private_key=_read(self.tls_key, "TLS client key"),
            certificate_chain=_read(self.tls_cert, "TLS client certificate"),
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
