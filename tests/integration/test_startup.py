"""What `pirm up` and `pirm demo` say while the services start: what each one is doing, each one
as it turns SERVING, and the ones still starting now and then; a service that cannot start
fails the start at once, naming it, and takes the others down."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import pytest

from services.common import cluster as local
from services.common.cluster import SERVICES, STARTING, StartFailed, is_serving, web_healthy
from tests.cluster import supervised_cluster

SERVING = re.compile(r"^  (\w+): serving after (\d+) s$")


def test_the_start_says_what_each_service_is_doing_and_when_it_serves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "STILL_WAITING_EVERY_S", 1.0)  # inference takes longer than 1 s
    lines: list[str] = []
    started = supervised_cluster(tmp_path)
    started.start(say=lines.append)
    try:
        assert all(is_serving(started.target(s)) for s in SERVICES)
        # the study's rating page, started last: alive, and ready since the scorer serves
        with urllib.request.urlopen(f"http://127.0.0.1:{started.web_port}/readyz",
                                    timeout=10) as ready:
            assert ready.status == 200
    finally:
        started.stop()
    assert not web_healthy(started.web_port)
    assert lines[-1].startswith(f"  study web: serving the rating page on "
                                f"http://127.0.0.1:{started.web_port}/rate/")
    lines = lines[:-1]
    assert lines[:3] == [f"  {s}: {STARTING[s]}" for s in SERVICES]
    serving = {m.group(1): index for index, m in enumerate(map(SERVING.match, lines)) if m}
    assert sorted(serving) == sorted(SERVICES)
    assert sum(bool(SERVING.match(line)) for line in lines) == len(SERVICES)  # each once
    waiting = [index for index, line in enumerate(lines)
               if line.startswith("  still waiting after ")]
    assert waiting, lines
    for index in waiting:  # names with why exactly the services not yet serving then
        named = {s for s in SERVICES if f"{s}: {STARTING[s]}" in lines[index]}
        assert named == {s for s in SERVICES if serving[s] > index}, lines[index]


def test_a_service_that_cannot_start_fails_the_start_at_once(tmp_path: Path) -> None:
    cluster = supervised_cluster(tmp_path)
    with socket.socket() as taken:  # the inference port is in use: it exits
        taken.bind(("127.0.0.1", cluster.ports["inference"]))
        taken.listen()
        with pytest.raises(StartFailed, match=r"inference exited with code \d+ while starting "
                                              r"\(see the logs in .*logs\)"):
            cluster.start(timeout_s=600)
    for service in SERVICES:  # the others were stopped too
        assert not Path(f"/proc/{cluster.pid(service)}").exists()
