"""The inference server: bootstrap shared with the other services, plus the TensorFlow engine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from inference import open_inference_pb2 as oip
from inference import open_inference_pb2_grpc as oip_grpc
from pirm.v1 import inference_pb2, inference_pb2_grpc

from services.common.auth import INTERNAL_ONLY
from services.common.config import add_server_flags, env_default
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
from services.core.limits import MIB
from services.inference import telemetry
from services.inference.engine import DEFAULT_MAX_RUN_S, Engine, EngineSettings
from services.inference.graphs import DEFAULT_MAX_GRAPH_NODES
from services.inference.open_inference import READINESS_PROBES, OpenInferenceServicer
from services.inference.servicer import InferenceServicer

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
OPEN_INFERENCE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def create_server(
    address: str,
    settings: EngineSettings | None = None,
    max_message_mb: int = 64,
    workers: int = 8,
    security: ServerSecurity | None = None,
    connections: ConnectionAge | None = None,
) -> RunningServer:
    engine = Engine(settings or EngineSettings())
    bindings = [
        ServiceBinding(SERVICE_NAME, inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                       InferenceServicer(engine)),
        # The standard protocol on the same port, over the same models.
        ServiceBinding(OPEN_INFERENCE_NAME,
                       oip_grpc.add_GRPCInferenceServiceServicer_to_server,
                       OpenInferenceServicer(engine), probes=READINESS_PROBES),
    ]
    running = create_grpc_server(address, bindings, max_message_mb, workers, security,
                                 connections)
    running.on_drain.append(engine.drain)
    running.on_stop.append(engine.close)
    engine.start()  # SERVING only once a TensorFlow worker is up
    running.mark_serving()
    return running


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pirm serve inference", description=__doc__)
    add_server_flags(parser, "inference")
    parser.add_argument(
        "--repository", type=Path, default=env_default("PIRM_MODEL_REPOSITORY", None, Path),
        help="model repository folder <repo>/<name>/<version>/model.pb (env PIRM_MODEL_REPOSITORY)",
    )
    parser.add_argument(
        "--device", choices=["cpu", "gpu"], default=env_default("PIRM_DEVICE", "cpu"),
        help="default device of this node (env PIRM_DEVICE)",
    )
    parser.add_argument(
        "--intra-op-threads", type=int,
        default=env_default("PIRM_INTRA_OP_THREADS", os.cpu_count() or 1, int),
        help="TensorFlow intra-op threads, reported with every timing (env PIRM_INTRA_OP_THREADS)",
    )
    parser.add_argument(
        "--inter-op-threads", type=int, default=env_default("PIRM_INTER_OP_THREADS", 1, int),
        help="TensorFlow inter-op threads (env PIRM_INTER_OP_THREADS)",
    )
    parser.add_argument(
        "--max-model-mb", type=int, default=env_default("PIRM_MAX_MODEL_MB", 100, int),
        help="largest model file accepted, in MiB (env PIRM_MAX_MODEL_MB)",
    )
    parser.add_argument(
        "--max-graph-nodes", type=int,
        default=env_default("PIRM_MAX_GRAPH_NODES", DEFAULT_MAX_GRAPH_NODES, int),
        help="most nodes a model's graph may have (env PIRM_MAX_GRAPH_NODES)",
    )
    parser.add_argument(
        "--memory-limit-mb", type=int, default=env_default("PIRM_MEMORY_LIMIT_MB", 3584, int),
        help="peak memory a model may use on an HD image, in MiB (env PIRM_MEMORY_LIMIT_MB)",
    )
    parser.add_argument(
        "--worker-memory-limit-mb", type=int,
        default=env_default("PIRM_WORKER_MEMORY_LIMIT_MB", 0, int),
        help="memory a TensorFlow worker may add for its models and inputs, in MiB; beyond it "
             "an allocation fails (default: 4x --memory-limit-mb; env PIRM_WORKER_MEMORY_LIMIT_MB)",
    )
    parser.add_argument(
        "--max-run-s", type=float, default=env_default("PIRM_MAX_RUN_S", DEFAULT_MAX_RUN_S, float),
        help="seconds one run of a model may last; beyond, its worker is killed and restarted "
             "and the request fails (0: no limit; env PIRM_MAX_RUN_S)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    settings = EngineSettings(
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        default_device=args.device,
        max_model_bytes=args.max_model_mb * MIB,
        max_graph_nodes=args.max_graph_nodes,
        memory_limit_bytes=args.memory_limit_mb * MIB,
        worker_memory_limit_bytes=args.worker_memory_limit_mb * MIB,
        max_run_s=args.max_run_s,
        repository=args.repository,
        node=env_default("PIRM_NODE_NAME", EngineSettings().node),
    )
    security = server_security(args, INTERNAL_ONLY)
    stop_metrics = start_metrics_endpoint(args.host, args.metrics_port, telemetry.REGISTRY)
    serve_until_signalled(
        lambda: create_server(f"{args.host}:{args.port}", settings, args.max_message_mb,
                              args.workers, security, ConnectionAge.from_args(args)),
        args.grace_seconds, stop_metrics)
