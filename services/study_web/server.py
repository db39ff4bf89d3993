"""The study web service's process: flags (defaults from the environment, as deploy/k8s sets
them), the scorer connection, and a production WSGI server (waitress) for the Flask app."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from waitress.server import create_server as create_wsgi_server

from services.client import ScorerClient
from services.common.auth import Role, token_of
from services.common.config import env_default
from services.common.logs import setup_logging
from services.core.channel import ChannelSecurity, open_channel
from services.study_web.app import create_app

DEFAULT_PORT = 8080
log = logging.getLogger(__name__)


@dataclass
class RunningWeb:
    """A serving study web service; `port` is the bound one (0 asked for any free port)."""

    port: int
    client: ScorerClient
    _server: object
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.close()  # type: ignore[attr-defined]
        self._thread.join(timeout=10)
        self.client.close()


def scorer_ready(target: str, security: ChannelSecurity) -> bool:
    """Whether the scorer answers its health check as SERVING (the page needs it)."""
    with open_channel(target, 4, security) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3.0).status
        except grpc.RpcError:
            return False
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def create_server(host: str, port: int, scorer: str, token: str | None,
                  threads: int = 8) -> RunningWeb:
    """Binds the page on host:port and serves it from a thread; stop() closes it."""
    security = ChannelSecurity(token)
    client = ScorerClient(scorer, token=token, deadline_s=30.0)
    app = create_app(client, lambda: scorer_ready(scorer, security))
    server = create_wsgi_server(app, host=host, port=port, threads=threads,
                                ident="pirm-study-web")
    thread = threading.Thread(target=server.run, name="study-web", daemon=True)
    thread.start()
    return RunningWeb(int(server.effective_port), client, server, thread)


def service_token(tokens_file: str) -> str | None:
    """The token the page calls the scorer with: $PIRM_TOKEN, else the internal line of the
    tokens file ($PIRM_TOKENS_FILE: `pirm up`'s, or the Secret mounted in Kubernetes)."""
    given = env_default("PIRM_TOKEN", "")
    if given:
        return str(given)
    path = Path(tokens_file) if tokens_file else None
    return token_of(path, Role.INTERNAL) if path is not None and path.is_file() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pirm serve study-web", description=__doc__)
    parser.add_argument("--host", default=env_default("PIRM_STUDY_WEB_HOST", "127.0.0.1"),
                        help="address to bind (env PIRM_STUDY_WEB_HOST)")
    parser.add_argument("--port", type=int,
                        default=env_default("PIRM_STUDY_WEB_PORT", DEFAULT_PORT, int),
                        help="HTTP port of the page, /healthz, /readyz and /metrics "
                             "(env PIRM_STUDY_WEB_PORT)")
    parser.add_argument("--scorer", default=env_default("PIRM_SCORER_TARGET",
                                                        "127.0.0.1:50053"),
                        help="the scorer, host:port (env PIRM_SCORER_TARGET)")
    parser.add_argument("--tokens-file", default=env_default("PIRM_TOKENS_FILE", ""),
                        help="tokens file whose internal line is this service's token "
                             "(env PIRM_TOKENS_FILE; PIRM_TOKEN overrides it)")
    parser.add_argument("--threads", type=int,
                        default=env_default("PIRM_STUDY_WEB_THREADS", 8, int),
                        help="request threads (env PIRM_STUDY_WEB_THREADS)")
    args = parser.parse_args(argv)
    setup_logging()
    running = create_server(args.host, args.port, args.scorer, service_token(args.tokens_file),
                            args.threads)
    log.info("serving", extra={"port": running.port, "scorer": args.scorer})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    running.stop()
