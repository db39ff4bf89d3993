"""Flags whose defaults come from environment variables (mirrored one to one in deploy/k8s)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.core.limits import DEFAULT_MAX_MESSAGE_MB

# gRPC handler threads: the scorer's WatchJob streams each hold one while their job runs.
DEFAULT_WORKERS = {"inference": 8, "metrics": 8, "scorer": 64}
DEFAULT_PORTS = {"inference": 50051, "metrics": 50052, "scorer": 50053}
# Where each service serves its Prometheus metrics (/metrics over HTTP).
DEFAULT_METRICS_PORTS = {"inference": 9101, "metrics": 9102, "scorer": 9103}


def env_default(name: str, default: Any, cast: Callable[[str], Any] = str) -> Any:
    """The value of $name cast like the flag, or the default when it is unset or empty."""
    raw = os.environ.get(name, "")
    return cast(raw) if raw else default


def add_server_flags(parser: argparse.ArgumentParser, service: str) -> None:
    """Flags every server has: where it listens, its message limit, its workers, its grace."""
    prefix = f"PIRM_{service.upper()}"
    parser.add_argument(
        "--host", default=env_default(f"{prefix}_HOST", "127.0.0.1"),
        help=f"address to bind (env {prefix}_HOST)",
    )
    parser.add_argument(
        "--port", type=int, default=env_default(f"{prefix}_PORT", DEFAULT_PORTS[service], int),
        help=f"port to bind, 0 for any free port (env {prefix}_PORT)",
    )
    parser.add_argument(
        "--metrics-port", type=int,
        default=env_default(f"{prefix}_METRICS_PORT", DEFAULT_METRICS_PORTS[service], int),
        help=f"port of the Prometheus /metrics endpoint on --host, 0 for none "
             f"(env {prefix}_METRICS_PORT)",
    )
    parser.add_argument(
        "--max-message-mb", type=int,
        default=env_default("PIRM_MAX_MESSAGE_MB", DEFAULT_MAX_MESSAGE_MB, int),
        help="largest gRPC message accepted or sent, in MiB (env PIRM_MAX_MESSAGE_MB)",
    )
    parser.add_argument(
        "--workers", type=int,
        default=env_default(f"{prefix}_WORKERS", DEFAULT_WORKERS[service], int),
        help=f"gRPC handler threads (env {prefix}_WORKERS)",
    )
    parser.add_argument(
        "--grace-seconds", type=float, default=env_default("PIRM_GRACE_SECONDS", 10.0, float),
        help="how long in-flight calls may finish after SIGTERM (env PIRM_GRACE_SECONDS)",
    )
    parser.add_argument(
        "--max-connection-age-s", type=float,
        default=env_default("PIRM_MAX_CONNECTION_AGE_S", 300.0, float),
        help="clients are asked to reconnect after this long, so that new replicas receive "
             "load (env PIRM_MAX_CONNECTION_AGE_S)")
    parser.add_argument(
        "--connection-age-grace-s", type=float,
        default=env_default("PIRM_CONNECTION_AGE_GRACE_S", None, float),
        help="how long a call in flight on such a connection may go on; unset: until it ends "
             "(env PIRM_CONNECTION_AGE_GRACE_S)")
    add_security_flags(parser)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    """Who may call a server and over what (see transport.ServerSecurity)."""
    parser.add_argument(
        "--tokens-file", type=Path, default=env_default("PIRM_TOKENS_FILE", None, Path),
        help="`role name token` lines: team, organiser and internal callers "
             "(env PIRM_TOKENS_FILE; or the lines themselves in PIRM_TOKENS, ';'-separated)")
    parser.set_defaults(tokens_inline=os.environ.get("PIRM_TOKENS", ""))
    parser.add_argument(
        "--insecure-dev", action="store_true", default=_flag("PIRM_INSECURE_DEV"),
        help="no authentication; the server then binds loopback only (env PIRM_INSECURE_DEV=1)")
    parser.add_argument("--tls-cert", type=Path, default=env_default("PIRM_TLS_CERT", None, Path),
                        help="this server's certificate chain, PEM (env PIRM_TLS_CERT)")
    parser.add_argument("--tls-key", type=Path, default=env_default("PIRM_TLS_KEY", None, Path),
                        help="this server's private key, PEM (env PIRM_TLS_KEY)")
    parser.add_argument(
        "--tls-client-ca", type=Path, default=env_default("PIRM_TLS_CLIENT_CA", None, Path),
        help="require client certificates signed by this CA: mutual TLS (env PIRM_TLS_CLIENT_CA)")


def add_channel_flags(parser: argparse.ArgumentParser) -> None:
    """How a client reaches our servers over TLS (see transport.ChannelSecurity)."""
    parser.add_argument("--tls-ca", type=Path, default=env_default("PIRM_TLS_CA", None, Path),
                        help="CA that signed the servers' certificates: connect with TLS "
                             "(env PIRM_TLS_CA)")
    parser.add_argument(
        "--tls-client-cert", type=Path, default=env_default("PIRM_TLS_CLIENT_CERT", None, Path),
        help="this client's certificate for mutual TLS (env PIRM_TLS_CLIENT_CERT)")
    parser.add_argument(
        "--tls-client-key", type=Path, default=env_default("PIRM_TLS_CLIENT_KEY", None, Path),
        help="this client's private key for mutual TLS (env PIRM_TLS_CLIENT_KEY)")
    parser.add_argument(
        "--tls-server-name", default=env_default("PIRM_TLS_SERVER_NAME", ""),
        help="name to check in the servers' certificates instead of the target's host "
             "(env PIRM_TLS_SERVER_NAME)")
