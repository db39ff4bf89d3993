"""The rules a submission passes before it becomes a job (services/scorer/submission.py),
called directly: the servicer only translates messages to and from them."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from services.core.errors import FailedPrecondition, InvalidArgument
from services.core.jobs import JobState
from services.core.track import Phase, Track
from services.scorer.evaluation import EvaluationSettings
from services.scorer.jobs import Job
from services.scorer.samples import make_sample_dataset
from services.scorer.store import QueueLimits
from services.scorer.submission import Submission, SubmissionRules, check_mos, with_mos

MODEL = b"\x0a\x03abc"  # vetting the graph is the inference service's: any bytes do here


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(tmp_path_factory.mktemp("rules"), Track.B, patches_per_photo=2)


def submission(folder: Path, **changes: object) -> Submission:
    fields: dict[str, object] = {"track": Track.B, "phase": Phase.VALIDATION,
                                 "dataset": str(folder), "team": "alpha", "graph_def": MODEL}
    fields.update(changes)
    return Submission(**fields)  # type: ignore[arg-type]


def test_an_accepted_submission_is_a_job_of_its_dataset_and_model(dataset: Path) -> None:
    accepted = SubmissionRules().accept(submission(dataset, request_id="r1", mos=None))
    images = sorted((dataset / "patches" / "iphone").iterdir())
    assert accepted.images == len(images) == 8
    assert accepted.model == MODEL and accepted.spec.team == "alpha"
    assert accepted.spec.dataset == str(dataset.resolve()) and accepted.spec.request_id == "r1"
    assert accepted.spec.model_sha256 == hashlib.sha256(MODEL).hexdigest()


@pytest.mark.parametrize(("changes", "refusal"), [
    ({"mos": -1.0}, "a MOS is a mean of opinion scores"),
    ({"mos": math.nan}, "a MOS is a mean of opinion scores"),
    ({"track": Track.A, "phase": Phase.FINAL}, "track A has no published baseline MOS"),
    ({"dataset": ""}, "give the dataset folder"),
    ({"graph_def": None}, "submit the model's .pb bytes or a repository model"),
    ({"graph_def": b"x" * 2048}, "the limit is 1,024 bytes"),
])
def test_refusals_say_what_to_fix(dataset: Path, changes: dict[str, object],
                                  refusal: str) -> None:
    with pytest.raises(InvalidArgument, match=refusal):
        SubmissionRules(max_model_bytes=1024).accept(submission(dataset, **changes))


def test_the_data_roots_and_the_image_limit(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="outside the data folders"):
        SubmissionRules(data_roots=(tmp_path,)).accept(submission(dataset))
    with pytest.raises(InvalidArgument, match="has 8 images; a job may have at most 5"):
        SubmissionRules(limits=QueueLimits(max_images_per_job=5)).accept(submission(dataset))
    with pytest.raises(InvalidArgument, match="does not exist"):
        SubmissionRules().accept(submission(dataset / "missing"))


def test_a_scorer_given_a_baseline_mos_takes_the_final_phase(dataset: Path) -> None:
    rules = SubmissionRules(mos_ref={Track.A: 2.0})
    a = make_sample_dataset(dataset.parent, Track.A)
    assert rules.accept(submission(a, track=Track.A, phase=Phase.FINAL)).spec.phase is Phase.FINAL


def test_a_mos_is_given_to_succeeded_final_phase_jobs_only(dataset: Path) -> None:
    spec = SubmissionRules().accept(submission(dataset, phase=Phase.FINAL)).spec
    job = Job("j1", spec, state=JobState.RUNNING)
    with pytest.raises(FailedPrecondition, match="is RUNNING: set its MOS once it has succeeded"):
        with_mos(job, 2.5, EvaluationSettings(baselines={}))
    validation = Job("j2", SubmissionRules().accept(submission(dataset)).spec,
                     state=JobState.SUCCEEDED)
    with pytest.raises(FailedPrecondition, match="validation-phase job"):
        with_mos(validation, 2.5, EvaluationSettings(baselines={}))
    check_mos(0.0)  # the lowest opinion score still is a score
