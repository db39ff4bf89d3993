"""services.scorer.pipeline (real threads) and the scorer's endpoint resolution."""

from __future__ import annotations

import threading

import pytest

from services.scorer.clients import resolve_targets
from services.scorer.pipeline import Stage, StageClock, run_pipeline

WAIT_S = 30.0  # a bound for threads that must meet; never reached when the code is right


def test_every_item_passes_every_stage_once() -> None:
    stored: list[int] = []
    lock = threading.Lock()

    def store(value: int) -> None:
        with lock:
            stored.append(value)

    clock = StageClock()
    stages = [Stage("double", lambda x: 2 * x, 2), Stage("inc", lambda x: x + 1, 3),
              Stage("store", store)]
    run_pipeline(range(50), stages, capacity=2, clock=clock)
    assert sorted(stored) == [2 * x + 1 for x in range(50)]
    assert clock.calls == {"double": 50, "inc": 50, "store": 50}
    assert clock.wall_s > 0.0


def test_stages_overlap() -> None:
    """Item 1 reaches the first stage while item 0 is still held in the second: the second
    stage waits for proof of that, so the test passes only if the stages run concurrently."""
    item_1_started = threading.Event()

    def first(x: int) -> int:
        if x == 1:
            item_1_started.set()
        return x

    def second(x: int) -> int:
        if x == 0:
            assert item_1_started.wait(WAIT_S), "stage 1 did not take item 1 meanwhile"
        return x

    run_pipeline([0, 1, 2], [Stage("first", first), Stage("second", second)])


def test_a_stage_runs_its_workers_concurrently() -> None:
    barrier = threading.Barrier(3, timeout=WAIT_S)  # three items meet inside the stage

    def meet(x: int) -> int:
        barrier.wait()
        return x

    run_pipeline(range(3), [Stage("meet", meet, workers=3)], capacity=3)


def test_queues_are_bounded() -> None:
    """With the last stage blocked, the feeder stops after filling the bounded queues."""
    release = threading.Event()
    fed: list[int] = []

    def items() -> object:
        for x in range(100):
            fed.append(x)
            yield x

    def slow(x: int) -> int:
        assert release.wait(WAIT_S)
        return x

    runner = threading.Thread(
        target=run_pipeline, args=(items(), [Stage("a", lambda x: x), Stage("slow", slow)], 2))
    runner.start()
    # Queues of 2, one item in each worker's hands: the feeder cannot get far ahead.
    for _ in range(50):
        if len(fed) >= 6:
            break
        threading.Event().wait(0.02)
    threading.Event().wait(0.2)
    assert len(fed) <= 7
    release.set()
    runner.join(WAIT_S)
    assert len(fed) == 100


def test_first_error_stops_everything_and_is_raised() -> None:
    seen: list[int] = []

    def fail_on_3(x: int) -> int:
        if x == 3:
            raise ValueError("image 3 is broken")
        return x

    with pytest.raises(ValueError, match="image 3 is broken"):
        run_pipeline(range(1000), [Stage("check", fail_on_3), Stage("store", seen.append)])
    assert len(seen) < 1000


def test_check_stops_the_run() -> None:
    class Stop(Exception):
        pass

    done: list[int] = []

    def check() -> None:
        if len(done) >= 5:
            raise Stop()

    with pytest.raises(Stop):
        run_pipeline(range(1000), [Stage("store", done.append)], check=check)
    assert 5 <= len(done) < 1000


def test_resolve_targets_expands_dns_names() -> None:
    assert resolve_targets("a:1, b:2,,a:1") == ["a:1", "b:2"]
    expanded = resolve_targets("dns:///localhost:50051")
    assert "127.0.0.1:50051" in expanded
    # A name that does not resolve stays, so that the pool reports it UNAVAILABLE by name.
    assert resolve_targets("dns:///no-such-host.invalid:1") == ["no-such-host.invalid:1"]
