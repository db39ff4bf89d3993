"""The user study's domain: task plans, quality control, the paper's MOS with its interval, and
the store's idempotent ratings (real SQLite)."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from services.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.core.track import Track
from services.scorer.study import (
    Answer,
    QualityRule,
    StudyDesign,
    Task,
    TaskKind,
    chosen_images,
    plan_tasks,
    qualities,
    study_mos,
)
from services.scorer.study_store import StudyMethod, StudyStore


def test_each_pair_reaches_distinct_raters_as_often_as_asked_and_loads_are_balanced() -> None:
    design = StudyDesign(raters=5, ratings_per_pair=3, seed=7, controls_per_rater=2,
                         repeats_per_rater=1)
    plans = plan_tasks(methods=3, images=4, design=design)
    seen: dict[tuple[int, int], list[int]] = defaultdict(list)
    for rater, tasks in enumerate(plans):
        assert [t.position for t in tasks] == list(range(len(tasks)))
        for t in tasks:
            if t.kind is TaskKind.PAIR:
                seen[(t.method, t.image)].append(rater)
        kinds = Counter(t.kind for t in tasks)
        assert kinds[TaskKind.IDENTICAL] == 1 and kinds[TaskKind.DEGRADED] == 1
        assert kinds[TaskKind.REPEAT] == 1
        for t in tasks:
            if t.kind is TaskKind.REPEAT:
                original = tasks[t.repeat_of]
                assert original.kind is TaskKind.PAIR and original.position < t.position
                assert (original.method, original.image) == (t.method, t.image)
    assert set(seen) == {(m, i) for m in range(3) for i in range(4)}
    assert all(len(r) == 3 and len(set(r)) == 3 for r in seen.values())
    loads = [sum(t.kind is TaskKind.PAIR for t in tasks) for tasks in plans]
    assert max(loads) - min(loads) <= 1 and sum(loads) == 3 * 4 * 3


def test_plans_are_seeded_and_differ_between_raters() -> None:
    design = StudyDesign(raters=4, ratings_per_pair=4, seed=3)
    assert plan_tasks(2, 6, design) == plan_tasks(2, 6, design)
    plans = plan_tasks(2, 6, design)
    orders = {tuple((t.method, t.image) for t in tasks if t.kind is TaskKind.PAIR)
              for tasks in plans}
    assert len(orders) > 1  # every rater has every pair here, in an order of their own
    sides = [t.flipped for tasks in plans for t in tasks]
    assert any(sides) and not all(sides)
    assert plan_tasks(2, 6, StudyDesign(raters=4, ratings_per_pair=4, seed=4)) != plans


def test_a_seeded_subset_of_images() -> None:
    names = [f"{i}.png" for i in range(20)]
    subset = chosen_images(names, StudyDesign(raters=1, images=5, seed=1))
    assert len(subset) == 5 and subset == sorted(subset, key=names.index)
    assert subset == chosen_images(names, StudyDesign(raters=1, images=5, seed=1))
    assert chosen_images(names, StudyDesign(raters=1)) == names


def test_design_errors_say_what_is_wrong() -> None:
    with pytest.raises(InvalidArgument, match="no finalists"):
        StudyDesign(raters=2).check(methods=0, dataset_images=3)
    with pytest.raises(InvalidArgument, match="ratings per"):
        StudyDesign(raters=2, ratings_per_pair=3).check(methods=2, dataset_images=3)


def answers_of(plans: list[list[Task]], level_of: Callable[[int, Task], int],
               seconds: float = 5.0) -> list[Answer]:
    return [Answer(rater, t, level_of(rater, t), seconds)
            for rater, tasks in enumerate(plans) for t in tasks]


def careful(rater: int, task: Task) -> int:
    if task.kind is TaskKind.IDENTICAL:
        return 4
    if task.kind is TaskKind.DEGRADED:
        return 1
    return 1 + (task.method + task.image + rater) % 4


def test_quality_control_excludes_for_each_reason_and_says_why() -> None:
    plans = plan_tasks(2, 3, StudyDesign(raters=3, ratings_per_pair=2, seed=1))
    answers = answers_of(plans, careful)
    # rater 1 fails every control; rater 2 answers in 0.3 s
    answers = [Answer(a.rater, a.task, (1 if a.task.kind is TaskKind.IDENTICAL else 4)
                      if a.rater == 1 and a.task.kind.control else a.level,
                      0.3 if a.rater == 2 else a.seconds) for a in answers]
    found = qualities(answers, QualityRule(min_median_seconds=1.0))
    assert not found[0].excluded
    assert found[1].control_failures == 2 and "failed 2 control tasks" in found[1].reasons[0]
    assert found[2].excluded and "median answer time 0.30 s" in found[2].reasons[0]
    # rater 0 answers a repeated pair 1 the first time and 4 the second
    repeat = next(a.task for a in answers if a.rater == 0 and a.task.kind is TaskKind.REPEAT)
    shifted = [Answer(a.rater, a.task, 4 if a.task == repeat else 1, a.seconds)
               if a.rater == 0 and a.task.position in (repeat.position, repeat.repeat_of)
               else a for a in answers]
    assert qualities(shifted, QualityRule())[0].inconsistent_repeats == 1
    assert "1 repeated task answered" in qualities(shifted, QualityRule())[0].reasons[0]
    assert not qualities(shifted, QualityRule(max_inconsistent_repeats=1))[0].excluded


def plain_mos(answers: list[Answer], excluded: set[int], method: int) -> float:
    """The paper's procedure written out plainly: mean per image, then mean over images."""
    per_image: dict[int, list[int]] = defaultdict(list)
    for a in answers:
        if a.rater not in excluded and a.task.kind is TaskKind.PAIR and a.task.method == method:
            per_image[a.task.image].append(a.level)
    means = [sum(v) / len(v) for v in per_image.values()]
    return sum(means) / len(means)


def test_mos_is_the_mean_over_images_of_the_mean_per_image_over_included_raters() -> None:
    design = StudyDesign(raters=6, ratings_per_pair=3, seed=11)
    plans = plan_tasks(3, 5, design)
    rng = random.Random(5)
    levels = {(r, t.position): rng.randint(1, 4) for r, ts in enumerate(plans) for t in ts}

    def level(rater: int, task: Task) -> int:
        if task.kind.control:
            return careful(rater, task) if rater != 4 else 2  # rater 4 fails the identical one
        return levels[(rater, task.position)]

    answers = answers_of(plans, level)
    rule = QualityRule(max_inconsistent_repeats=99)
    results = study_mos(answers, 3, rule, seed=1, samples=300)
    for r in results:
        assert r.mos == pytest.approx(plain_mos(answers, {4}, r.method), abs=1e-12)
        assert r.low <= r.mos <= r.high
        included = [a for a in answers if a.rater != 4 and a.task.kind is TaskKind.PAIR
                    and a.task.method == r.method]
        assert r.ratings == len(included)
        assert r.distribution == tuple(sum(a.level == v for a in included) for v in (1, 2, 3, 4))
    for r in results:
        for other in r.ties:
            o = results[other]
            assert r.low <= o.high and o.low <= r.high


def test_clearly_separated_methods_are_not_tied() -> None:
    design = StudyDesign(raters=8, ratings_per_pair=8, seed=2, controls_per_rater=0,
                         repeats_per_rater=0)
    plans = plan_tasks(2, 10, design)
    answers = answers_of(plans, lambda rater, t: 4 if t.method == 0 else 1)
    results = study_mos(answers, 2, QualityRule(), samples=200)
    assert results[0].mos == 4.0 and results[1].mos == 1.0
    assert results[0].ties == () and results[1].ties == ()


def test_a_method_without_included_ratings_has_no_mos() -> None:
    plans = plan_tasks(2, 2, StudyDesign(raters=1, ratings_per_pair=1, controls_per_rater=0,
                                         repeats_per_rater=0))
    answers = [a for a in answers_of(plans, careful) if a.task.method == 0]
    results = study_mos(answers, 2, QualityRule(), samples=50)
    assert math.isnan(results[1].mos) and results[1].ratings == 0


@pytest.fixture
def store(tmp_path: Path) -> StudyStore:
    return StudyStore(tmp_path / "scorer.db")


def make_study(store: StudyStore, raters: int = 2) -> None:
    design = StudyDesign(raters=raters, ratings_per_pair=1, seed=0)
    store.create("s1", Track.B, "test", design, QualityRule(),
                 [StudyMethod(0, "job0", "alpha", False), StudyMethod(1, "job1", "SRCNN", True)],
                 ["1.jpg", "2.jpg"], plan_tasks(2, 2, design))


def test_a_rating_is_recorded_once_whatever_the_repeats(store: StudyStore,
                                                        tmp_path: Path) -> None:
    make_study(store)
    rater = store.raters("s1")[0]
    shown = store.shown(store.rater(rater.token), "W1", "A1")
    assert shown.task is not None and shown.done == 0
    assert store.rate(rater, shown.task_id, 3) == (3, True)
    assert store.rate(rater, shown.task_id, 1) == (3, False)  # a double click: first stands
    again = StudyStore(tmp_path / "scorer.db")  # durable: another connection reads it
    assert [(a.rater, a.level) for a in again.answers("s1")] == [(0, 3)]
    assert again.rater(rater.token).worker_id == "W1"
    nxt = store.shown(rater)
    assert nxt.done == 1 and nxt.task_id != shown.task_id


def test_errors_for_unknown_tokens_foreign_tasks_and_closed_studies(store: StudyStore) -> None:
    make_study(store)
    first, second = store.raters("s1")
    with pytest.raises(NotFound, match="unknown rater token"):
        store.rater("no-such-token")
    theirs = store.shown(second).task_id
    with pytest.raises(NotFound, match="not given to this rater"):
        store.rate(first, theirs, 2)
    with pytest.raises(InvalidArgument, match="level from 1 to 4"):
        store.rate(second, theirs, 5)
    with pytest.raises(InvalidArgument, match="exists already"):
        make_study(store)
    store.close_study("s1")
    with pytest.raises(FailedPrecondition, match="closed"):
        store.open_rater(first.token)
