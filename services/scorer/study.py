"""The final phase's user study (SPEC.md section 7), free of gRPC and SQL: which tasks each
rater sees, the hidden quality controls, who is excluded and why, and the MOS as the paper
computed it (levels 1-4 averaged per image, then per method) with a bootstrap interval.

A task shows the original input beside one result. Its kind is a method's result on an image
(a *pair*), or a control: the input shown as its own result (`identical`: a careful rater
answers the top level) or a strongly degraded result (`degraded`: the bottom levels), or a
*repeat* of one of the rater's own pairs (the two answers should be close)."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from services.core.errors import InvalidArgument

LEVELS = ("probably worse", "probably better", "definitely better", "excellent")  # 1..4
TOP_LEVELS = frozenset({4})  # what the input shown as its own result must get
BOTTOM_LEVELS = frozenset({1, 2})  # what a strongly degraded result must get
BOOTSTRAP_SAMPLES = 1000


class TaskKind(Enum):
    PAIR = "pair"
    IDENTICAL = "identical"
    DEGRADED = "degraded"
    REPEAT = "repeat"

    @property
    def control(self) -> bool:
        return self in (TaskKind.IDENTICAL, TaskKind.DEGRADED)


@dataclass(frozen=True)
class StudyDesign:
    """What the organiser chooses when creating a study."""

    raters: int
    ratings_per_pair: int = 3
    images: int = 0  # 0: every image of the phase's dataset; else a seeded random subset
    seed: int = 0
    controls_per_rater: int = 2  # half identical, half degraded
    repeats_per_rater: int = 1

    def check(self, methods: int, dataset_images: int) -> None:
        if methods < 1:
            raise InvalidArgument("the phase has no finalists: no team has a succeeded "
                                  "submission standing for it and no baseline was evaluated; "
                                  "a study needs at least one method to rate")
        if dataset_images < 1:
            raise InvalidArgument("the phase's dataset has no images to rate")
        if self.raters < 1:
            raise InvalidArgument(f"a study needs at least one rater, not {self.raters}")
        if not 1 <= self.ratings_per_pair <= self.raters:
            raise InvalidArgument(
                f"ratings per (method, image) must be 1..{self.raters} (the raters: each "
                f"rates a pair at most once), not {self.ratings_per_pair}")
        if self.images < 0:
            raise InvalidArgument(f"images must be 0 (all) or a count, not {self.images}")
        if self.controls_per_rater < 0 or self.repeats_per_rater < 0:
            raise InvalidArgument("controls and repeats per rater cannot be negative")


@dataclass(frozen=True)
class Task:
    """One screen of one rater. `method` and `image` index the study's lists (method is -1 for
    a control); `flipped`: the result on the left; `repeat_of`: the position of the repeated
    task in the rater's order."""

    position: int
    kind: TaskKind
    method: int
    image: int
    flipped: bool
    repeat_of: int = -1


def chosen_images(names: Sequence[str], design: StudyDesign) -> list[str]:
    """All images, or `design.images` of them drawn with the study's seed (in dataset order)."""
    if design.images == 0 or design.images >= len(names):
        return list(names)
    drawn = set(random.Random(f"images/{design.seed}").sample(range(len(names)), design.images))
    return [name for index, name in enumerate(names) if index in drawn]


def plan_tasks(methods: int, images: int, design: StudyDesign) -> list[list[Task]]:
    """Each rater's tasks in the order shown. Rating k of pair i goes to rater
    (i * ratings_per_pair + k) mod raters: consecutive raters, so a pair never reaches one
    rater twice and the loads differ by at most one. Pairs are shuffled first (seeded), and
    each rater's order and sides are shuffled with a seed of their own."""
    pairs = [(m, i) for m in range(methods) for i in range(images)]
    random.Random(f"pairs/{design.seed}").shuffle(pairs)
    given: list[list[tuple[int, int]]] = [[] for _ in range(design.raters)]
    for index, pair in enumerate(pairs):
        for k in range(design.ratings_per_pair):
            given[(index * design.ratings_per_pair + k) % design.raters].append(pair)
    plans = []
    for rater, own in enumerate(given):
        rng = random.Random(f"rater/{design.seed}/{rater}")
        kinds: list[tuple[TaskKind, int, int]] = [(TaskKind.PAIR, m, i) for m, i in own]
        for c in range(design.controls_per_rater):
            kind = TaskKind.IDENTICAL if c % 2 == 0 else TaskKind.DEGRADED
            kinds.append((kind, -1, rng.randrange(images)))
        rng.shuffle(kinds)
        tasks = [Task(p, kind, m, i, rng.random() < 0.5) for p, (kind, m, i) in enumerate(kinds)]
        # Repeats come after what they repeat (the later the better: less remembered).
        firsts = [t for t in tasks if t.kind is TaskKind.PAIR]
        for original in rng.sample(firsts, min(design.repeats_per_rater, len(firsts))):
            at = rng.randrange(original.position + 1, len(tasks) + 1)
            tasks.insert(at, Task(-1, TaskKind.REPEAT, original.method, original.image,
                                  not original.flipped, repeat_of=original.position))
            tasks = _renumbered(tasks)
        plans.append(tasks)
    return plans


def _renumbered(tasks: list[Task]) -> list[Task]:
    """Positions 0..n-1 again after an insertion, repeats still pointing at their original."""
    moved = {t.position: p for p, t in enumerate(tasks) if t.position >= 0}
    return [Task(p, t.kind, t.method, t.image, t.flipped,
                 moved.get(t.repeat_of, -1) if t.kind is TaskKind.REPEAT else -1)
            for p, t in enumerate(tasks)]


@dataclass(frozen=True)
class Answer:
    """A stored rating with what quality control needs: the task it answers and how long the
    rater looked (seconds from the task being shown to the answer, measured by the scorer)."""

    rater: int
    task: Task
    level: int
    seconds: float


@dataclass(frozen=True)
class QualityRule:
    """The organiser's exclusion rule."""

    max_control_failures: int = 0  # control tasks answered outside their expected levels
    max_repeat_gap: int = 1  # a repeat answered further than this from the first answer ...
    max_inconsistent_repeats: int = 0  # ... counts as inconsistent; more than this: excluded
    min_median_seconds: float = 1.5  # faster than a person can look at two images


@dataclass(frozen=True)
class RaterQuality:
    rater: int
    answers: int
    control_failures: int
    inconsistent_repeats: int
    median_seconds: float
    reasons: tuple[str, ...]

    @property
    def excluded(self) -> bool:
        return bool(self.reasons)


def control_passed(kind: TaskKind, level: int) -> bool:
    return level in (TOP_LEVELS if kind is TaskKind.IDENTICAL else BOTTOM_LEVELS)


def rater_quality(rater: int, answers: Sequence[Answer], rule: QualityRule) -> RaterQuality:
    """A rater's quality figures and the rule's reasons to exclude them (none: included). A
    rater with no answers is neither measured nor excluded: they add nothing to the MOS."""
    failures = sum(1 for a in answers if a.task.kind.control
                   and not control_passed(a.task.kind, a.level))
    first = {a.task.position: a.level for a in answers}
    inconsistent = sum(1 for a in answers if a.task.kind is TaskKind.REPEAT
                       and a.task.repeat_of in first
                       and abs(first[a.task.repeat_of] - a.level) > rule.max_repeat_gap)
    median = statistics.median(a.seconds for a in answers) if answers else math.nan
    reasons = []
    if failures > rule.max_control_failures:
        reasons.append(f"failed {failures} control task{'s' if failures != 1 else ''} "
                       f"(allowed {rule.max_control_failures})")
    if inconsistent > rule.max_inconsistent_repeats:
        reasons.append(f"{inconsistent} repeated task{'s' if inconsistent != 1 else ''} "
                       f"answered more than {rule.max_repeat_gap} level apart (allowed "
                       f"{rule.max_inconsistent_repeats})")
    if answers and median < rule.min_median_seconds:
        reasons.append(f"median answer time {median:.2f} s, below {rule.min_median_seconds:g} s")
    return RaterQuality(rater, len(answers), failures, inconsistent, median, tuple(reasons))


def qualities(answers: Iterable[Answer], rule: QualityRule) -> dict[int, RaterQuality]:
    by_rater: dict[int, list[Answer]] = defaultdict(list)
    for answer in answers:
        by_rater[answer.rater].append(answer)
    return {rater: rater_quality(rater, own, rule) for rater, own in sorted(by_rater.items())}


@dataclass(frozen=True)
class MethodMos:
    method: int
    mos: float  # nan: no included rating
    low: float  # the 95% bootstrap interval
    high: float
    ratings: int
    images: int  # images with at least one included rating
    distribution: tuple[int, int, int, int]  # included ratings per level 1..4
    ties: tuple[int, ...] = field(default=())  # methods whose interval overlaps this one's


def pair_ratings(answers: Iterable[Answer], included: set[int]) -> list[tuple[int, int, int, int]]:
    """(rater, method, image, level) of the included raters' pair tasks: the ratings the MOS
    is made of (controls and repeats only measure the raters)."""
    return [(a.rater, a.task.method, a.task.image, a.level) for a in answers
            if a.task.kind is TaskKind.PAIR and a.rater in included]


def study_mos(answers: Sequence[Answer], methods: int, rule: QualityRule, seed: int = 0,
              samples: int = BOOTSTRAP_SAMPLES) -> list[MethodMos]:
    """Each method's MOS over the included raters: per image the mean of its ratings, then the
    mean over images (the paper's procedure); its 95% interval by a two-way bootstrap (raters
    and images drawn with replacement together, percentiles of the MOS); ties where intervals
    overlap."""
    quality = qualities(answers, rule)
    included = {r for r, q in quality.items() if not q.excluded}
    rows = np.array(pair_ratings(answers, included), dtype=np.int64).reshape(-1, 4)
    point = _mos(rows, methods, None, None)
    rng = np.random.default_rng(seed)
    raters = np.unique(rows[:, 0]) if len(rows) else np.zeros(0, np.int64)
    images = np.unique(rows[:, 2]) if len(rows) else np.zeros(0, np.int64)
    draws = np.full((samples, methods), np.nan)
    if len(rows):
        for b in range(samples):
            rater_weight = _weights(rng, raters, int(rows[:, 0].max()) + 1)
            image_weight = _weights(rng, images, int(rows[:, 2].max()) + 1)
            draws[b] = _mos(rows, methods, rater_weight, image_weight)
    result = []
    for m in range(methods):
        mine = rows[rows[:, 1] == m] if len(rows) else rows
        finite = draws[:, m][np.isfinite(draws[:, m])]
        low, high = ((float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5)))
                     if len(finite) else (math.nan, math.nan))
        counts = np.bincount(mine[:, 3], minlength=5)[1:5] if len(mine) else np.zeros(4, int)
        result.append(MethodMos(m, float(point[m]), low, high, len(mine),
                                len(np.unique(mine[:, 2])) if len(mine) else 0,
                                (int(counts[0]), int(counts[1]), int(counts[2]),
                                 int(counts[3]))))
    return with_ties(result)


def _weights(rng: np.random.Generator, present: np.ndarray, size: int) -> np.ndarray:
    """How many times each id is drawn when `len(present)` draws are made among them."""
    drawn = rng.choice(present, size=len(present), replace=True)
    return np.bincount(drawn, minlength=size).astype(np.float64)


def _mos(rows: np.ndarray, methods: int, rater_weight: np.ndarray | None,
         image_weight: np.ndarray | None) -> np.ndarray:
    """Per-method mean over images of the per-image mean rating, raters and images counted as
    often as their weight (None: once each)."""
    out = np.full(methods, np.nan)
    if not len(rows):
        return out
    w = np.ones(len(rows)) if rater_weight is None else rater_weight[rows[:, 0]]
    images = int(rows[:, 2].max()) + 1
    key = rows[:, 1] * images + rows[:, 2]
    total = np.bincount(key, weights=w * rows[:, 3], minlength=methods * images)
    count = np.bincount(key, weights=w, minlength=methods * images)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_image = (total / count).reshape(methods, images)
    rated = (count > 0).reshape(methods, images)
    iw = np.ones(images) if image_weight is None else image_weight[:images]
    for m in range(methods):
        weights = iw * rated[m]
        if weights.sum() > 0:
            out[m] = float(np.sum(np.where(rated[m], per_image[m], 0.0) * weights)
                           / weights.sum())
    return out


def with_ties(results: list[MethodMos]) -> list[MethodMos]:
    """Each method with the others whose 95% intervals overlap its own: statistically tied."""
    def overlaps(a: MethodMos, b: MethodMos) -> bool:
        return all(math.isfinite(x) for x in (a.low, a.high, b.low, b.high)) and \
            a.low <= b.high and b.low <= a.high
    return [MethodMos(r.method, r.mos, r.low, r.high, r.ratings, r.images, r.distribution,
                      tuple(o.method for o in results if o.method != r.method
                            and overlaps(r, o)))
            for r in results]
