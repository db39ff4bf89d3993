"""The three services as local processes, supervised like Kubernetes would: each in its own
process, a dead one restarted, all stopped together."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.auth import Role, token_of, write_tokens_file
from services.common.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, env_default
from services.common.supervision import SUPERVISOR_PID

log = logging.getLogger(__name__)
SERVICES = ("inference", "metrics", "scorer")
# The rating page of the user study: an HTTP service, a client of the scorer, started last.
STUDY_WEB = "study_web"
DEFAULT_STUDY_WEB_PORT = 8080
# What each service does before it reports SERVING: what a start says while it waits.
STARTING = {
    "inference": "starting its TensorFlow worker (TensorFlow's import)",
    "metrics": "loading the compiled metric kernels (2-4 min if `make setup` did not compile them)",
    "scorer": "opening its job store and baseline models",
}
STILL_WAITING_EVERY_S = 15.0


# A local cluster's callers: the scorer, and the person at this machine as an organiser.
LOCAL_CALLERS = ((Role.INTERNAL, "scorer"), (Role.ORGANISER, "local"))


def local_tokens_file(env: Mapping[str, str] = os.environ) -> Path:
    """Where `pirm up` keeps its tokens: PIRM_TOKENS_FILE if given, else `tokens` in
    PIRM_STATE_DIR (default var/)."""
    given = env.get("PIRM_TOKENS_FILE")
    return Path(given) if given else Path(env.get("PIRM_STATE_DIR") or "var") / "tokens"


def local_token(role: Role = Role.ORGANISER) -> str | None:
    """The local cluster's token of `role`, as kubectl reads its kubeconfig: so that `pirm`
    commands on the machine that ran `pirm up` need no --token."""
    path = local_tokens_file()
    return token_of(path, role) if path.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configured_ports() -> dict[str, int]:
    """PIRM_<SERVICE>_PORT, else the default port of each service."""
    return {s: env_default(f"PIRM_{s.upper()}_PORT", DEFAULT_PORTS[s], int) for s in SERVICES}


def configured_metrics_ports() -> dict[str, int]:
    """PIRM_<SERVICE>_METRICS_PORT, else each service's default /metrics port (9101-9103)."""
    return {s: env_default(f"PIRM_{s.upper()}_METRICS_PORT", DEFAULT_METRICS_PORTS[s], int)
            for s in SERVICES}


def _says_serving(health: health_pb2_grpc.HealthStub) -> bool:
    try:
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=2.0).status
    except grpc.RpcError:
        return False
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def wait_serving(target: str, timeout_s: float = 120.0) -> None:
    """Waits until the server's health service reports SERVING."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while not _says_serving(health):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} did not become SERVING within {timeout_s:.0f} s")
            time.sleep(0.2)


def is_serving(target: str, timeout_s: float = 3.0) -> bool:
    """Whether a server at `target` reports SERVING within `timeout_s`."""
    try:
        wait_serving(target, timeout_s)
    except TimeoutError:
        return False
    return True


def web_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2.0) as page:
            return bool(page.status == 200)
    except OSError:
        return False


class StartFailed(RuntimeError):
    """A service of a local cluster exited or did not become SERVING in time (all stopped)."""


@dataclass
class LocalCluster:
    ports: dict[str, int] = field(default_factory=lambda: configured_ports())
    metrics_ports: dict[str, int] = field(default_factory=lambda: configured_metrics_ports())
    extra_env: dict[str, str] = field(default_factory=dict)
    restart: bool = True
    log_dir: Path | None = None  # service logs go there instead of this terminal
    insecure_dev: bool = False  # True: no authentication (loopback only anyway)
    web_port: int = 0  # the user study's rating page (`pirm up`: 8080); 0: not started
    teams: tuple[str, ...] = ()  # teams given a token of their own in a new tokens file
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _supervisor: threading.Thread | None = None
    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        (*SERVICES, STUDY_WEB), 0))

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for service in SERVICES:
            env[f"PIRM_{service.upper()}_HOST"] = "127.0.0.1"
            env[f"PIRM_{service.upper()}_PORT"] = str(self.ports[service])
            env[f"PIRM_{service.upper()}_METRICS_PORT"] = str(self.metrics_ports[service])
        env["PIRM_INFERENCE_TARGET"] = self.target("inference")
        env["PIRM_METRICS_TARGET"] = self.target("metrics")
        env["PIRM_SCORER_TARGET"] = self.target("scorer")
        env["PIRM_STUDY_WEB_HOST"] = "127.0.0.1"
        env["PIRM_STUDY_WEB_PORT"] = str(self.web_port)
        env.update(self.extra_env)
        env[SUPERVISOR_PID] = str(os.getpid())  # each service dies with this process
        if self.insecure_dev:
            env["PIRM_INSECURE_DEV"] = "1"
            env.pop("PIRM_TOKENS_FILE", None)
        else:
            env["PIRM_TOKENS_FILE"] = str(self.tokens_file)
        env.pop("PIRM_TOKENS", None)
        return env

    @property
    def tokens_file(self) -> Path:
        """local_tokens_file() in this cluster's environment (made at start)."""
        return local_tokens_file({**os.environ, **self.extra_env})

    def token(self, role: Role = Role.ORGANISER, name: str = "") -> str | None:
        """A token of `role` (and `name`: a team's) for clients of this cluster (None without
        authentication)."""
        return None if self.insecure_dev else token_of(self.tokens_file, role, name)

    def start(self, timeout_s: float = 180.0, say: Callable[[str], None] | None = None) -> None:
        """Starts the services and waits until all are SERVING; `say` is told what each is
        doing meanwhile and when each is serving."""
        if not self.insecure_dev and not self.tokens_file.exists():
            write_tokens_file(self.tokens_file, LOCAL_CALLERS + tuple(
                (Role.TEAM, team) for team in self.teams))
            log.info("tokens written", extra={"file": str(self.tokens_file)})
        for service in SERVICES:
            self._spawn(service)
        try:
            self._wait_serving(timeout_s, say or (lambda _: None))
            if self.web_port:
                self._spawn(STUDY_WEB)
                self._wait_web(timeout_s, say or (lambda _: None))
        except BaseException:
            self.stop()
            raise
        if self.restart:
            self._supervisor = threading.Thread(target=self._supervise, daemon=True)
            self._supervisor.start()

    def _wait_serving(self, timeout_s: float, say: Callable[[str], None]) -> None:
        """All services at once, each named as it turns SERVING; every STILL_WAITING_EVERY_S
        the ones still starting, with what they are doing. A service that exits while
        starting fails the start at once, pointing at its log."""
        started = time.monotonic()
        waiting = list(SERVICES)
        for service in waiting:
            say(f"  {service}: {STARTING[service]}")
        next_note = started + STILL_WAITING_EVERY_S
        with contextlib.ExitStack() as channels:
            health = {s: health_pb2_grpc.HealthStub(channels.enter_context(
                grpc.insecure_channel(self.target(s)))) for s in SERVICES}
            while waiting:
                for service in list(waiting):
                    self._check_alive(service)
                    if _says_serving(health[service]):
                        waiting.remove(service)
                        say(f"  {service}: serving after {time.monotonic() - started:.0f} s")
                elapsed = time.monotonic() - started
                if waiting and elapsed > timeout_s:
                    raise StartFailed(f"{', '.join(waiting)} did not become SERVING within "
                                      f"{timeout_s:.0f} s{self._see_logs()}")
                if waiting and time.monotonic() >= next_note:
                    next_note += STILL_WAITING_EVERY_S
                    say(f"  still waiting after {elapsed:.0f} s for " + "; ".join(
                        f"{s}: {STARTING[s]}" for s in waiting))
                time.sleep(0.2)

    def _wait_web(self, timeout_s: float, say: Callable[[str], None]) -> None:
        """Until the rating page answers /healthz (it needs no model: a few seconds)."""
        deadline = time.monotonic() + timeout_s
        while not web_healthy(self.web_port):
            self._check_alive(STUDY_WEB)
            if time.monotonic() > deadline:
                raise StartFailed(f"the study web service did not answer on port "
                                  f"{self.web_port} within {timeout_s:.0f} s{self._see_logs()}")
            time.sleep(0.2)
        say(f"  study web: serving the rating page on http://127.0.0.1:{self.web_port}/rate/"
            "<rater token>")

    def _check_alive(self, service: str) -> None:
        code = self._processes[service].poll()
        if code is not None:
            raise StartFailed(f"{service} exited with code {code} while starting"
                              f"{self._see_logs()}")

    def _see_logs(self) -> str:
        return f" (see the logs in {self.log_dir})" if self.log_dir is not None else ""

    def _spawn(self, service: str) -> None:
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{service}.log", "ab")  # noqa: SIM115 - child owns it
        self._processes[service] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"], env=self.env(),
            stdout=output, stderr=output,
        )
        if output is not None:
            output.close()
        log.info("started", extra={"service": service, "pid": self._processes[service].pid})

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            for service, process in list(self._processes.items()):
                if process.poll() is not None and not self._stopping.is_set():
                    log.warning("service died; restarting",
                                extra={"service": service, "returncode": process.returncode})
                    self.restarts[service] += 1
                    self._spawn(service)

    def pid(self, service: str) -> int:
        return self._processes[service].pid

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to all (the page, then the scorer, so that it stops taking work), then
        wait."""
        self._stopping.set()
        for service in (STUDY_WEB, *reversed(SERVICES)):
            process = self._processes.get(service)
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self._processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def wait(self) -> None:
        """Blocks until SIGTERM/SIGINT, then stops every service."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
        self.stop()
