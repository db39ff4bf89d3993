"""`pirm`: run the cluster, submit models, read results, and compute the challenge's figures."""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from services.cli.commands import (
    batch,
    bench,
    boards,
    challenge,
    cluster,
    demo,
    inspect,
    jobs,
    metrics,
    reference,
    report,
    study,
)

# Each family registers its commands; this order is the order of `pirm --help`.
FAMILIES = (cluster, jobs, challenge, boards, metrics, bench, inspect, batch, report, study,
            reference, demo)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except grpc.RpcError as error:
        print(f"pirm: {error.code().name}: {error.details()}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pirm", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.register(commands)
    return parser


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
