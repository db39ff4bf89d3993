"""The rules a submission must pass before it becomes a job, and those of a MOS given to a
finished job: plain domain code that the scorer's servicer calls (it only translates the
messages), and the tests call directly."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from services.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from services.core.jobs import JobState
from services.core.limits import DEFAULT_MAX_MODEL_BYTES, check_model_size, confined_path
from services.core.track import Phase, Track
from services.scorer.challenge import Challenge, PhaseRule
from services.scorer.evaluation import EvaluationSettings, InferenceBackend, rescored
from services.scorer.jobs import Job, JobResult, JobSpec
from services.scorer.phases import daily_quota
from services.scorer.protocol import quality_items, timing_image_path
from services.scorer.scoring import TRACKS, TrackConstants
from services.scorer.store import DailyQuota, QueueLimits, in_words


@dataclass(frozen=True)
class Submission:
    """What a caller asks to evaluate, as the API carries it (a track and phase already
    recognised: the servicer refuses unknown ones)."""

    track: Track
    phase: Phase
    dataset: str
    team: str  # whom the caller may submit for (access.py decided)
    graph_def: bytes | None = None  # the model's .pb bytes, or
    repository_model: str = ""  # "name/version" in the inference repository
    model_name: str = ""
    request_id: str = ""
    mos: float | None = None
    input_tensor: str = ""
    output_tensor: str = ""
    sharded: bool = False
    phase_name: str = ""  # the challenge's phase; empty: named like `phase`


@dataclass(frozen=True)
class Accepted:
    spec: JobSpec
    model: bytes | None  # the bytes to store (none for a repository model)
    images: int
    quota: DailyQuota | None = None  # checked by the store as it creates the job


@dataclass(frozen=True)
class SubmissionRules:
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    limits: QueueLimits = field(default_factory=QueueLimits)
    data_roots: tuple[Path, ...] = ()  # datasets must lie inside one; () = anywhere
    mos_ref: dict[Track, float] = field(default_factory=dict)  # the scorer's overrides
    challenge: Challenge | None = None  # the organisers' definition; None: a tool

    def accept(self, submission: Submission, by_team: bool = False,
               now: dt.datetime | None = None) -> Accepted:
        """The job a submission makes, or an error saying what to fix: its phase (with a
        challenge: open, and the dataset is the phase's), its MOS, its phase's baseline MOS,
        its dataset (inside the data roots, in the challenge layout, not too many images) and
        its model's size. `by_team`: the caller is a team (organisers may name any dataset)."""
        now = now or dt.datetime.now(dt.UTC)
        track, mos = submission.track, submission.mos
        rule = self._phase_rule(submission, by_team, now)
        phase = rule.scoring if rule is not None else submission.phase
        if mos is not None:
            if by_team and rule is not None:
                raise PermissionDenied("a MOS comes from the final phase's user study, which "
                                       "the organisers run: submit the model only")
            check_mos(mos)
        # A final-phase job without a MOS is evaluated and waits, unranked, for SetMos; either
        # way its track needs a baseline MOS to be scored.
        if phase is Phase.FINAL and self.constants(track).mos_ref is None \
                and track not in self.mos_ref:
            raise InvalidArgument(
                f"track {track.value} has no published baseline MOS: start the scorer with "
                f"--mos-ref-{track.value.lower()} to score its final phase")
        if not submission.dataset and rule is None:
            raise InvalidArgument("give the dataset folder (challenge layout) to evaluate on")
        dataset = (rule.dataset if not submission.dataset and rule is not None
                   else confined_path(submission.dataset, self.data_roots))
        images = len(quality_items(track, dataset))  # a malformed dataset: refused now
        if images > self.limits.max_images_per_job:
            raise InvalidArgument(
                f"dataset {submission.dataset} has {images} images; a job may have at most "
                f"{self.limits.max_images_per_job} (split it into several jobs)")
        timing_image_path(dataset)
        if submission.graph_def is not None:
            check_model_size(len(submission.graph_def), self.max_model_bytes)
            sha256 = hashlib.sha256(submission.graph_def).hexdigest()
        elif submission.repository_model:
            sha256 = ""
        else:
            raise InvalidArgument("submit the model's .pb bytes or a repository model")
        spec = JobSpec(
            track=track, phase=phase, dataset=str(dataset.resolve()), model_sha256=sha256,
            model_name=submission.model_name, team=submission.team,
            request_id=submission.request_id, mos=mos, input_tensor=submission.input_tensor,
            output_tensor=submission.output_tensor,
            repository_model=submission.repository_model, sharded=submission.sharded,
            phase_name=rule.name if rule is not None else submission.phase_name)
        quota = None
        if by_team and rule is not None and rule.submissions_per_day is not None:
            quota = daily_quota(rule, now)
        return Accepted(spec, submission.graph_def, images, quota)

    def constants(self, track: Track) -> TrackConstants:
        if self.challenge is not None and track in self.challenge.tracks:
            return self.challenge.tracks[track].constants
        return TRACKS[track]

    def _phase_rule(self, submission: Submission, by_team: bool,
                    now: dt.datetime) -> PhaseRule | None:
        """The challenge's phase the submission enters, checked for a team: named, open, and
        without a dataset of the team's choosing. None: no challenge, or an organiser's run
        on a dataset of its own."""
        if self.challenge is None:
            return None
        track = self.challenge.track(submission.track)
        if not submission.phase_name:
            if not by_team:
                return None
            raise InvalidArgument(
                f"name the phase to enter (--phase): track {track.track.value}'s phases are "
                + ", ".join(f"{p.name} ({p.state_at(now)})" for p in track.phases))
        rule = track.phase(submission.phase_name)
        if not by_team:
            return rule
        if submission.dataset:
            raise InvalidArgument(
                "teams submit models, not datasets: the phase's dataset is used (leave the "
                "dataset out)")
        where = f"track {track.track.value}'s {rule.name} phase"
        state = rule.state_at(now)
        if state == "not open":
            assert rule.opens is not None
            wait = (rule.opens - now).total_seconds()
            raise FailedPrecondition(f"{where} opens at {rule.opens:%Y-%m-%d %H:%M} UTC (in "
                                     f"{in_words(wait)}); submit then", retry_after_s=wait)
        if state == "closed":
            assert rule.closes is not None
            raise FailedPrecondition(f"{where} closed at {rule.closes:%Y-%m-%d %H:%M} UTC; it "
                                     "takes no more submissions")
        return rule


def vet_model(accepted: Accepted, inference: InferenceBackend) -> None:
    """Loading vets the graph (parse, op allowlist, tensor names, TensorFlow's import) so that
    a bad file is refused at submission. If inference is down, the job is accepted and its
    model vetted when it runs."""
    spec = accepted.spec
    try:
        inference.load_model(spec.inference_name, accepted.model, spec.repository_model,
                             spec.input_tensor, spec.output_tensor)
    except Unavailable:
        return


def check_mos(mos: float) -> None:
    if not (math.isfinite(mos) and mos >= 0.0):
        raise InvalidArgument(f"a MOS is a mean of opinion scores (finite, >= 0), got {mos}")


def with_mos(job: Job, mos: float, settings: EvaluationSettings) -> JobResult:
    """A finished final-phase job's result scored again with the user study's MOS, or
    FailedPrecondition saying why the job takes none."""
    if job.spec.phase is not Phase.FINAL:
        raise FailedPrecondition(
            f"job {job.job_id} is a validation-phase job: its scores use MS-SSIM, not MOS")
    if job.state is not JobState.SUCCEEDED or job.result is None:
        raise FailedPrecondition(
            f"job {job.job_id} is {job.state.value}: set its MOS once it has succeeded")
    check_mos(mos)
    return rescored(job.result, job.spec, mos, settings)
