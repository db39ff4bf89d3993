"""`pirm up` (the three services as supervised local processes), `pirm token`, `pirm serve`
(one service, as a container runs it)."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from services.cli.output import say_aside
from services.common.auth import Role, new_token
from services.common.cluster import DEFAULT_STUDY_WEB_PORT, LocalCluster, StartFailed
from services.common.config import env_default
from services.common.logs import setup_logging


def register(commands: Any) -> None:
    up = commands.add_parser("up", help="start the three services locally (foreground)")
    up.add_argument("--insecure-dev", action="store_true",
                    help="no authentication (the services listen on loopback anyway); default: "
                         "tokens from $PIRM_TOKENS_FILE, else made in $PIRM_STATE_DIR/tokens")
    up.set_defaults(run=up_command)

    token = commands.add_parser(
        "token", help="make a new bearer token (with --role and --name: a tokens-file line)")
    token.add_argument("--role", choices=[r.value for r in Role])
    token.add_argument("--name", help="the team's (or organiser's) name")
    token.set_defaults(run=token_command)

    serve = commands.add_parser("serve", help="run one service (what a container runs)")
    serve.add_argument("service", choices=["inference", "metrics", "scorer", "study_web"])
    serve.add_argument("args", nargs=argparse.REMAINDER, help="the service's own flags")
    serve.set_defaults(run=serve_command)


def up_command(args: argparse.Namespace) -> int:
    setup_logging()
    cluster = LocalCluster(insecure_dev=args.insecure_dev, web_port=env_default(
        "PIRM_STUDY_WEB_PORT", DEFAULT_STUDY_WEB_PORT, int))
    print("Starting inference, metrics, scorer and the study's rating page ...",
          file=sys.stderr, flush=True)
    try:
        cluster.start(say=say_aside)  # stdout says only that the cluster is up, and where
    except StartFailed as error:
        raise SystemExit(f"pirm up: {error}") from None
    targets = ", ".join(f"{s} {cluster.target(s)} (/metrics on :{cluster.metrics_ports[s]})"
                        for s in ("inference", "metrics", "scorer"))
    print(f"cluster up: {targets}; rating page http://127.0.0.1:{cluster.web_port}/rate/<token> "
          "(Ctrl-C stops)", flush=True)
    print("authentication: off (--insecure-dev)" if args.insecure_dev else
          f"authentication: tokens in {cluster.tokens_file} (pirm commands here use its "
          "organiser token; teams get `team NAME TOKEN` lines)", flush=True)
    cluster.wait()
    return 0


def token_command(args: argparse.Namespace) -> int:
    if bool(args.role) != bool(args.name):
        print("pirm: give --role and --name together, or neither", file=sys.stderr)
        return 2
    print(f"{args.role} {args.name} {new_token()}" if args.role else new_token())
    return 0


def serve_command(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"services.{args.service}.server")
    module.main(args.args)
    return 0
