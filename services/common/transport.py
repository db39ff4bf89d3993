"""How a server listens: TLS (mutual when the server names a client CA) and bearer tokens, all
configured by file paths and flags (config.py). The clients' side is services/core/channel.py."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.auth import Role, Tokens, load_tokens
from services.core.channel import host_of, is_loopback, read_file
from services.core.errors import InvalidArgument


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    client_ca: Path | None = None  # given: clients must present a certificate it signed

    def credentials(self) -> grpc.ServerCredentials:
        key, cert = read_file(self.key, "TLS key"), read_file(self.cert, "TLS certificate")
        assert key is not None and cert is not None
        client_ca = read_file(self.client_ca, "client CA")
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


