"""`pirm batch --local N`: the sharding of a Kubernetes batch without Kubernetes, as N local
`pirm shard` processes with the same arguments (--index 0..N-1), against a given scorer, the
local one if it is serving, or the three services started for the run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.batch.shard import shard_arguments
from services.common.auth import Role
from services.common.cluster import SERVICES, LocalCluster, free_port, is_serving
from services.core.errors import FailedPrecondition
from services.scorer.samples import REPO_ROOT

LOCAL_SCORER = "127.0.0.1:50053"
LOG_TAIL = 20  # lines of a failed shard's output shown


@dataclass(frozen=True)
class Targets:
    """Where the shards find the services."""

    scorer: str
    inference: str
    metrics: str
    token: str | None  # the internal token the shards present


@dataclass(frozen=True)
class LocalBatch:
    batch_id: str
    track: str
    models: str  # local paths
    data: str
    processes: int
    # None: $PIRM_SCORER_TARGET or the local default if it is serving, else a cluster is
    # started; given: it must be serving, with `inference` and `metrics` as its own services.
    scorer: str | None
    inference: str
    metrics: str
    token: str | None = None  # internal token for a given or already running scorer


@contextmanager
def batch_services(batch: LocalBatch, say: Callable[[str], None]) -> Iterator[Targets]:
    """The services the shards use, started (and stopped after) if none is serving."""
    if batch.scorer is not None:
        if not is_serving(batch.scorer):
            raise FailedPrecondition(
                f"no scorer is serving at {batch.scorer}: start one (pirm up), or leave out "
                "--scorer to have pirm batch start the services")
        yield Targets(batch.scorer, batch.inference, batch.metrics, batch.token)
        return
    local = os.environ.get("PIRM_SCORER_TARGET") or LOCAL_SCORER
    if is_serving(local):
        yield Targets(local, batch.inference, batch.metrics, batch.token)
        return
    logs = REPO_ROOT / "var" / "logs"
    say(f"No scorer at {local}: starting inference, metrics and scorer (logs in {logs})")
    cluster = LocalCluster(ports={s: free_port() for s in SERVICES}, log_dir=logs)
    cluster.start(say=say)
    try:
        yield Targets(cluster.target("scorer"), cluster.target("inference"),
                      cluster.target("metrics"), cluster.token(Role.INTERNAL))
    finally:
        cluster.stop()


def shard_command(batch: LocalBatch, targets: Targets, index: int) -> list[str]:
    return [sys.executable, "-m", "services.cli.main",
            *shard_arguments(str(index), batch.processes, batch.track, batch.models,
                             batch.data, targets.scorer, batch.batch_id),
            "--inference", targets.inference, "--metrics", targets.metrics]


def shard_environment(targets: Targets) -> dict[str, str]:
    """The token goes by environment, not on a command line that `ps` shows."""
    env = dict(os.environ)
    if targets.token:
        env["PIRM_TOKEN"] = targets.token
    return env


def run_shards(batch: LocalBatch, targets: Targets, say: Callable[[str], None]) -> bool:
    """Runs the shards side by side and waits for all; True if every one succeeded. A failed
    shard's last output lines are shown."""
    with tempfile.TemporaryDirectory(prefix="pirm-shards-") as folder:
        logs = [Path(folder) / f"shard-{index}.log" for index in range(batch.processes)]
        processes = []
        try:
            for index, log in enumerate(logs):
                with log.open("wb") as output:
                    processes.append(subprocess.Popen(
                        shard_command(batch, targets, index), stdout=output,
                        stderr=subprocess.STDOUT, env=shard_environment(targets)))
            codes = [process.wait() for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:  # interrupted: no shard outlives the command
                    process.kill()
                    process.wait()
        for index, (code, log) in enumerate(zip(codes, logs, strict=True)):
            lines = log.read_text(errors="replace").splitlines()
            if code == 0:
                say(lines[-1] if lines else f"shard {index}: done")
            else:
                say(f"shard {index} failed (exit {code}); its last output:")
                say("\n".join(f"  {line}" for line in lines[-LOG_TAIL:]))
    return all(code == 0 for code in codes)
