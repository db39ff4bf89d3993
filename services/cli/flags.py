"""The flags several commands share, and the scorer connection they describe (--scorer, --token,
TLS files; without --token, the local cluster's token that `pirm up` wrote)."""

from __future__ import annotations

import argparse

from services.client import ScorerClient
from services.common.auth import Role
from services.common.cluster import local_token
from services.common.config import add_channel_flags, env_default
from services.core.channel import ChannelSecurity
from services.core.errors import InvalidArgument

SCORER = "PIRM_SCORER_TARGET"
INFERENCE = "PIRM_INFERENCE_TARGET"
METRICS = "PIRM_METRICS_TARGET"
# The Services of deploy/k8s, as batch pods reach them (dns:///: every pod of a headless one).
IN_CLUSTER = {"scorer": "scorer:50053", "inference": "dns:///inference:50051",
              "metrics": "dns:///metrics:50052"}


def add_track(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--track", choices=["A", "B"], required=True, type=str.upper)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_scorer_flags(parser: argparse.ArgumentParser) -> None:
    """--scorer, --json and the connection flags: what every command that asks the scorer
    takes."""
    parser.add_argument("--scorer", default=env_default(SCORER, "127.0.0.1:50053"),
                        help=f"scorer host:port (env {SCORER})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_connection_flags(parser)


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token", default=env_default("PIRM_TOKEN", ""),
        help="bearer token (env PIRM_TOKEN; default: the organiser token of the local cluster "
             "that `pirm up` made in $PIRM_STATE_DIR/tokens, if any)")
    add_channel_flags(parser)


def security(args: argparse.Namespace, role: Role = Role.ORGANISER) -> ChannelSecurity:
    """The token and TLS files of the command line; without --token, the local cluster's."""
    try:
        return ChannelSecurity.from_args(args, args.token or local_token(role))
    except InvalidArgument as error:
        raise SystemExit(f"pirm: {error}") from None


def scorer_client(args: argparse.Namespace, target: str | None = None) -> ScorerClient:
    return ScorerClient(target or args.scorer, security=security(args))
