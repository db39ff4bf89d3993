"""User studies at work in the scorer (the rules are study.py, the tables study_store.py): a
study is created over a final phase's finalists, whose outputs on the chosen images are made
once through the inference service and kept as 8-bit PNG (the only model outputs the system
stores), so that raters never wait for a model; raters get tasks and rate; closing the study
gives each finalist's job its MOS and rescores it, like SetMos. Free of gRPC."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from services.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.core.jobs import JobState
from services.core.track import EntryPolicy, Phase, Track
from services.scorer.challenge import Challenge
from services.scorer.crops import centre_window, png_bytes, to_uint8
from services.scorer.evaluation import EvaluationSettings, InferenceBackend, load_job_model
from services.scorer.leaderboard import standing
from services.scorer.protocol import prepare_quality_pair, quality_items
from services.scorer.store import JobStore
from services.scorer.study import (
    Answer,
    MethodMos,
    QualityRule,
    RaterQuality,
    StudyDesign,
    TaskKind,
    chosen_images,
    plan_tasks,
    qualities,
    study_mos,
)
from services.scorer.study_store import CLOSED, Rater, Shown, StudyMethod, StudyRecord, StudyStore
from services.scorer.submission import with_mos
from services.scorer.telemetry import study_read

STUDY_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
EXAMPLE_IMAGES = 3
EXAMPLE_SIZE = 256
SRCNN = "srcnn"  # the baseline whose MOS is the final scores' MOS_ref


@dataclass(frozen=True)
class StudyReport:
    study: StudyRecord
    mos: list[MethodMos]
    quality: dict[int, RaterQuality]
    progress: dict[int, tuple[int, int]]
    raters: list[Rater]
    answers: list[Answer]


class Studies:
    """The scorer's studies: PNGs under `folder` (the scorer's var folder), records in `store`."""

    def __init__(self, store: StudyStore, jobs: JobStore, inference: InferenceBackend,
                 settings: EvaluationSettings, challenge: Challenge | None,
                 folder: Path) -> None:
        self.store, self.jobs, self.inference = store, jobs, inference
        self.settings, self.challenge, self.folder = settings, challenge, folder

    # -- organisers ----------------------------------------------------------------------

    def finalists(self, track: Track, phase_name: str) -> list[StudyMethod]:
        """The job standing for each team in the final phase (its selection, else the phase's
        rule), the baselines' jobs among them, teams first then baselines, by name."""
        rule = self.challenge.phase(track, phase_name) if self.challenge is not None and \
            track in self.challenge.tracks else None
        if rule is not None and rule.scoring is not Phase.FINAL:
            raise InvalidArgument(f"track {track.value}'s {phase_name} phase is scored by "
                                  "MS-SSIM: a user study rates a final phase")
        jobs = [job for job in self.jobs.list_jobs(track=track)
                if job.spec.phase is Phase.FINAL]
        chosen = standing(jobs, track, phase_name,
                          policy=rule.entry if rule is not None else EntryPolicy.LATEST,
                          selections=self.jobs.selections(track, phase_name))
        ordered = sorted(chosen.items(), key=lambda tj: (tj[1].spec.baseline, tj[0]))
        return [StudyMethod(index, job.job_id, team, job.spec.baseline)
                for index, (team, job) in enumerate(ordered)]

    def create(self, study_id: str, track: Track, phase_name: str, design: StudyDesign,
               rule: QualityRule) -> StudyRecord:
        """Makes every finalist's output on the chosen images (and the controls' images),
        then records the study: raters can start as soon as this returns."""
        if not STUDY_ID.match(study_id):
            raise InvalidArgument(f"a study name is 1-40 lower-case letters, digits, - or _, "
                                  f"starting with a letter or digit, not {study_id!r}")
        if study_id in self.store.studies():
            raise InvalidArgument(f"a study named {study_id!r} exists already: choose another "
                                  "name")
        methods = self.finalists(track, phase_name)
        jobs = [self.jobs.get_job(m.job_id) for m in methods]
        datasets = {job.spec.dataset for job in jobs}
        if len(datasets) > 1:
            raise FailedPrecondition(f"the finalists of track {track.value}'s {phase_name} "
                                     f"phase were evaluated on different datasets "
                                     f"({', '.join(sorted(datasets))}): rerun them on one")
        items = quality_items(track, Path(datasets.pop())) if jobs else []
        design.check(len(methods), len(items))
        names = chosen_images([item.name for item in items], design)
        chosen = [item for item in items if item.name in set(names)]
        folder = self.folder / study_id
        inputs = []
        for index, item in enumerate(chosen):
            model_input, _ = prepare_quality_pair(track, item)
            inputs.append(model_input)
            pixels = to_uint8(model_input[0])
            _save(folder / "input" / f"{index}.png", pixels)
            _save(folder / "degraded" / f"{index}.png", degraded(pixels, design.seed + index))
        for method, job in zip(methods, jobs, strict=True):
            model = load_job_model(job.spec, self.jobs, self.inference)
            for index, model_input in enumerate(inputs):
                output = self.inference.infer(model, model_input)
                _save(folder / "result" / str(method.method) / f"{index}.png",
                      to_uint8(output[0]))
        plans = plan_tasks(len(methods), len(names), design)
        return self.store.create(study_id, track, phase_name, design, rule, methods, names,
                                 plans)

    def report(self, study_id: str, seed: int = 0) -> StudyReport:
        study = self.store.study(study_id)
        answers = self.store.answers(study_id)
        quality = qualities(answers, study.rule)
        study_read(study_id, len(quality), sum(q.excluded for q in quality.values()))
        return StudyReport(study, study_mos(answers, len(study.methods), study.rule, seed),
                           quality, self.store.progress(study_id),
                           self.store.raters(study_id), answers)

    def close(self, study_id: str) -> StudyReport:
        """Closes the study (no more ratings) and gives each finalist's job its MOS, rescored
        as SetMos does; a method without an included rating keeps no MOS. Closing twice sets
        the same values again."""
        self.store.close_study(study_id)
        report = self.report(study_id)
        settings = self._settings_for(report)
        for method, result in zip(report.study.methods, report.mos, strict=True):
            job = self.jobs.get_job(method.job_id)
            if math.isfinite(result.mos) and job.state is JobState.SUCCEEDED:
                self.jobs.rescore(job.job_id, result.mos, with_mos(job, result.mos, settings))
        return report

    def _settings_for(self, report: StudyReport) -> EvaluationSettings:
        """MOS_ref is SRCNN's MOS in the same study (SPEC.md section 3: the published 2.295 is
        track B's study's): when SRCNN is among the study's baselines and was rated, its MOS
        is the reference, unless the operator set MOS_ref for the track explicitly."""
        track = report.study.track
        if track in self.settings.mos_ref:
            return self.settings
        srcnn = [result.mos for method, result in zip(report.study.methods, report.mos,
                                                      strict=True)
                 if method.baseline and method.team.lower() == SRCNN and
                 math.isfinite(result.mos)]
        if not srcnn:
            return self.settings
        return replace(self.settings, mos_ref={**self.settings.mos_ref, track: srcnn[0]})

    def example_pngs(self, study_id: str) -> list[tuple[str, bytes, list[bytes]]]:
        """A few images of the study: (name, input crop, each method's result crop), the
        same centre window of at most EXAMPLE_SIZE px."""
        study = self.store.study(study_id)
        examples = []
        for index, name in list(enumerate(study.images))[:EXAMPLE_IMAGES]:
            crops = [_crop_png(self._path(study_id, "input", index))]
            crops += [_crop_png(self._path(study_id, "result", index, m.method))
                      for m in study.methods]
            examples.append((name, crops[0], crops[1:]))
        return examples

    # -- raters --------------------------------------------------------------------------

    def next_task(self, token: str, worker_id: str = "", assignment_id: str = "") -> Shown:
        """The rater's current task, or none left (the thank-you page). A closed study still
        answers a rater who had finished, so that their completion code stays readable."""
        rater = self.store.rater(token)
        if self.store.study(rater.study_id).state == CLOSED:
            done, total = self.store.progress(rater.study_id).get(rater.rater, (0, 0))
            if done < total:
                self.store.open_rater(token)  # FailedPrecondition: closed
            return Shown(rater, None, "", done, total)
        return self.store.shown(rater, worker_id, assignment_id)

    def rate(self, token: str, task_id: str, level: int) -> tuple[int, bool, Shown]:
        """Records the answer (once) and returns the stored level, whether it was stored
        now, and the rater's next task."""
        rater = self.store.open_rater(token)
        level, stored = self.store.rate(rater, task_id, level)
        return level, stored, self.store.shown(rater)

    def task_image(self, token: str, task_id: str, side: str) -> bytes:
        """The PNG of one side of a task given to this rater: `input` or `result` (for a
        control, the input itself or its degraded copy)."""
        rater = self.store.rater(token)
        task = self.store.task(rater, task_id)
        if side == "input":
            return self._path(rater.study_id, "input", task.image).read_bytes()
        if side != "result":
            raise InvalidArgument(f"side must be input or result, not {side!r}")
        if task.kind is TaskKind.IDENTICAL:
            return self._path(rater.study_id, "input", task.image).read_bytes()
        if task.kind is TaskKind.DEGRADED:
            return self._path(rater.study_id, "degraded", task.image).read_bytes()
        return self._path(rater.study_id, "result", task.image, task.method).read_bytes()

    def _path(self, study_id: str, kind: str, image: int, method: int | None = None) -> Path:
        folder = self.folder / study_id / kind
        path = (folder / str(method) if method is not None else folder) / f"{image}.png"
        if not path.is_file():
            raise NotFound(f"study {study_id}: its image {path.relative_to(self.folder)} is "
                           "missing from the scorer's var folder; create the study again")
        return path


def degraded(pixels: np.ndarray, seed: int) -> np.ndarray:
    """A strongly degraded copy (a control no careful rater finds better): 8x fewer pixels
    each way, blown back up with nearest neighbours, plus strong noise."""
    height, width = pixels.shape[:2]
    small = Image.fromarray(pixels).resize((max(1, width // 8), max(1, height // 8)),
                                           Image.Resampling.BOX)
    blocky = np.asarray(small.resize((width, height), Image.Resampling.NEAREST), np.float64)
    noise = np.random.default_rng(seed).normal(0.0, 40.0, blocky.shape)
    return np.asarray(np.clip(np.round(blocky + noise), 0, 255), np.uint8)


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")


def _crop_png(path: Path) -> bytes:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return png_bytes(pixels[centre_window(pixels.shape[0], pixels.shape[1], EXAMPLE_SIZE)])
