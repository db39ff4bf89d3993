"""The quality stage, one pipeline for the scorer's jobs (evaluation.py) and the batch shards
(services/batch/shard.py): prepare (decode; the track's model input and target) -> inference
-> metrics -> finish, joined by bounded queues, each stage with its own workers (pipeline.py),
so that the slowest stage sets the pace. Free of gRPC: inference and metrics are two callables.

What flows is a unit of work `W` (an image of a job, or a (job, image) pair of a batch); the
caller says which image and which model it stands for, and what to do with each outcome."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from services.core.errors import InvalidArgument
from services.core.quality import PairQuality, QualityOptions
from services.core.track import Track
from services.scorer.pipeline import Stage, StageClock, run_pipeline
from services.scorer.protocol import (
    QUALITY_OPTIONS,
    QualityItem,
    check_defined,
    prepare_quality_pixels,
)

W = TypeVar("W")
Infer = Callable[[str, np.ndarray], np.ndarray]  # (model, input) -> output
Evaluate = Callable[[np.ndarray, np.ndarray, QualityOptions], PairQuality]
Timed = Callable[[str, Callable[[Any], Any]], Callable[[Any], Any]]


@dataclass(frozen=True)
class Outcome(Generic[W]):
    """What became of a unit of work: its figures, why its model failed on it (only when the
    caller contains such failures), or nothing (skipped)."""

    work: W
    quality: PairQuality | None = None
    error: str = ""


@dataclass(frozen=True)
class QualityStage(Generic[W]):
    track: Track
    item_of: Callable[[W], QualityItem]
    model_of: Callable[[W], str]
    infer: Infer
    evaluate: Evaluate
    inference_workers: int  # one call in flight per inference endpoint
    metrics_workers: int
    # The model's own failures on an image (InvalidArgument: it fails on the input, exceeds the
    # memory limit, gives an undefined MS-SSIM) become outcomes instead of stopping the run:
    # a batch goes on with its other models. Otherwise they stop the run (a job fails).
    contain_model_errors: bool = False
    skip: Callable[[W], bool] = lambda work: False  # work whose job no longer needs it
    timed: Timed = lambda name, work: work  # wraps each stage's work (Prometheus timings)

    def run(self, work: list[W], finish: Callable[[Outcome[W]], None],
            check: Callable[[], None] = lambda: None, clock: StageClock | None = None) -> None:
        """Every unit of work through the stages; `finish` gets each outcome in a single
        thread; `check` is called between units (it raises to stop the run)."""
        options = QUALITY_OPTIONS[self.track]
        finishing = threading.Lock()

        def prepare(unit: W) -> tuple[W, np.ndarray | None, np.ndarray | None]:
            if self.skip(unit):
                return unit, None, None
            return (unit, *prepare_quality_pixels(self.track, self.item_of(unit)))

        def infer(work: tuple[W, np.ndarray | None, np.ndarray | None]
                  ) -> tuple[W, np.ndarray | Outcome[W], np.ndarray | None]:
            unit, model_input, target = work
            if model_input is None or self.skip(unit):
                return unit, Outcome(unit), target
            try:
                return unit, self.infer(self.model_of(unit), model_input), target
            except InvalidArgument as error:
                return unit, self._failed(unit, error), target

        def measure(work: tuple[W, np.ndarray | Outcome[W], np.ndarray | None]) -> Outcome[W]:
            unit, output, target = work
            if isinstance(output, Outcome):
                return output
            assert target is not None
            try:
                quality = self.evaluate(output, target, options)
                check_defined(self.track, self.item_of(unit).name, quality)  # names the image
            except InvalidArgument as error:
                return self._failed(unit, error, named=True)
            return Outcome(unit, quality)

        def done(outcome: Outcome[W]) -> None:
            with finishing:
                finish(outcome)

        run_pipeline(work, [
            Stage("prepare", self.timed("prepare", prepare)),
            Stage("inference", self.timed("inference", infer), self.inference_workers),
            Stage("metrics", self.timed("metrics", measure), self.metrics_workers),
            Stage("store", done),
        ], capacity=2, check=check, clock=clock)

    def _failed(self, unit: W, error: InvalidArgument, named: bool = False) -> Outcome[W]:
        if not self.contain_model_errors:
            raise error
        text = str(error) if named else f"image {self.item_of(unit).name}: {error}"
        return Outcome(unit, error=text)
