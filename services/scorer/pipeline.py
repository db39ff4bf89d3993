"""A job's images flow through stages (prepare, inference, metrics, store) connected by bounded
queues, each stage with its own worker threads, so that the slowest stage sets the pace and the
others are hidden behind it: metrics of image k run while image k+1 is inferred.

Free of gRPC and of the scorer's domain: a stage is a name, a function and a worker count.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

_END = object()  # one per worker of the next stage when a stage has finished
_POLL_S = 0.1  # how often a blocked worker looks whether the pipeline has failed


@dataclass(frozen=True)
class Stage:
    name: str
    work: Callable[[Any], Any]  # takes the previous stage's result, returns the next one's input
    workers: int = 1


class StageClock:
    """Busy seconds per stage (summed over its workers) and the pipeline's wall time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.busy_s: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.wall_s = 0.0

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.busy_s[stage] = self.busy_s.get(stage, 0.0) + seconds
            self.calls[stage] = self.calls.get(stage, 0) + 1


class _Run:
    """The shared state of one pipeline run: its queues and its first failure."""

    def __init__(self, stages: Sequence[Stage], capacity: int) -> None:
        self.stages = stages
        self.inboxes: list[queue.Queue[Any]] = [queue.Queue(capacity) for _ in stages]
        self.failed = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._running = [stage.workers for stage in stages]

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
        self.failed.set()

    def put(self, index: int, item: Any) -> bool:
        """Blocks while stage `index` is full; False once the pipeline has failed."""
        while not self.failed.is_set():
            try:
                self.inboxes[index].put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, index: int) -> Any:
        while not self.failed.is_set():
            try:
                return self.inboxes[index].get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _END

    def finish_stage(self, index: int) -> None:
        """The last worker of a stage to finish tells each worker of the next one to end."""
        with self._lock:
            self._running[index] -= 1
            last = self._running[index] == 0
        if last and index + 1 < len(self.stages):
            for _ in range(self.stages[index + 1].workers):
                self.put(index + 1, _END)


def run_pipeline(
    items: Iterable[Any],
    stages: Sequence[Stage],
    capacity: int = 2,
    check: Callable[[], None] = lambda: None,
    clock: StageClock | None = None,
) -> None:
    """Feeds `items` through `stages`; returns when every item has left the last stage.

    `check` runs before every unit of work and may raise to stop the run (shutdown, a cancelled
    job). The first exception of any stage stops all of them and is raised here."""
    run = _Run(stages, capacity)
    clock = clock or StageClock()
    started = time.perf_counter()
    threads = [
        threading.Thread(target=_work, args=(run, index, check, clock),
                         name=f"pipeline-{stage.name}-{worker}", daemon=True)
        for index, stage in enumerate(stages)
        for worker in range(stage.workers)
    ]
    for thread in threads:
        thread.start()
    try:
        for item in items:
            check()
            if not run.put(0, item):
                break
    except BaseException as error:  # noqa: BLE001 - stops the workers, then raised below
        run.fail(error)
    for _ in range(stages[0].workers):
        run.put(0, _END)
    for thread in threads:
        thread.join()
    clock.wall_s += time.perf_counter() - started
    if run.error is not None:
        raise run.error


def _work(run: _Run, index: int, check: Callable[[], None], clock: StageClock) -> None:
    stage = run.stages[index]
    last = index + 1 == len(run.stages)
    while True:
        item = run.get(index)
        if item is _END:
            break
        try:
            check()
            started = time.perf_counter()
            result = stage.work(item)
            clock.add(stage.name, time.perf_counter() - started)
        except BaseException as error:  # noqa: BLE001 - handed to run_pipeline's caller
            run.fail(error)
            break
        if not last and not run.put(index + 1, result):
            break
    run.finish_stage(index)
