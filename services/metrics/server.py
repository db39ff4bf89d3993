"""The metrics server: bootstrap shared with the other services, plus the metrics servicer."""

from __future__ import annotations

import argparse

from pirm.v1 import metrics_pb2, metrics_pb2_grpc

from services.common.auth import INTERNAL_ONLY
from services.common.config import add_server_flags
from services.common.logs import setup_logging
from services.common.server import (
    ConnectionAge,
    RunningServer,
    ServiceBinding,
    serve_until_signalled,
    server_security,
)
from services.common.server import create_server as create_grpc_server
from services.common.telemetry import start_metrics_endpoint
from services.common.transport import ServerSecurity
from services.metrics import telemetry
from services.metrics.quality import warm_up
from services.metrics.servicer import MetricsServicer

SERVICE_NAME = metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name


def create_server(address: str, max_message_mb: int = 64, workers: int = 8,
                  security: ServerSecurity | None = None,
                  connections: ConnectionAge | None = None) -> RunningServer:
    binding = ServiceBinding(
        SERVICE_NAME, metrics_pb2_grpc.add_MetricsServiceServicer_to_server, MetricsServicer()
    )
    running = create_grpc_server(address, [binding], max_message_mb, workers, security,
                                 connections)
    warm_up()  # load the compiled kernels (compiled once per machine) before SERVING
    running.mark_serving()
    return running


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pirm serve metrics", description=__doc__)
    add_server_flags(parser, "metrics")
    args = parser.parse_args(argv)
    setup_logging()
    security = server_security(args, INTERNAL_ONLY)
    stop_metrics = start_metrics_endpoint(args.host, args.metrics_port, telemetry.REGISTRY)
    serve_until_signalled(
        lambda: create_server(f"{args.host}:{args.port}", args.max_message_mb, args.workers,
                              security, ConnectionAge.from_args(args)),
        args.grace_seconds, stop_metrics)
