"""The challenge an organiser defines in one file (YAML, given to the scorer with --challenge /
PIRM_CHALLENGE): its tracks, each track's phases (dataset, opening and closing times, quota,
what teams see, the leaderboard's visibility and which entry stands for a team), the score
constants and the baseline models. Read and checked when the scorer starts: an error names
the file, the line and the field, and says what is expected. Without a definition the scorer
works as a tool: any caller names the dataset, nothing limits submissions.

    title: PIRM 2018 perceptual image enhancement on smartphones
    tracks:
      B:
        baselines:                    # leaderboard rows of their own, evaluated by the scorer
          SRCNN: /data/pirm2018/models_pretrained/dped_srcnn.pb
        phases:
          - name: validation
            dataset: /data/pirm2018/dped
            opens: 2018-06-01T00:00:00Z
            closes: 2018-07-22T23:59:59Z
            submissions_per_day: 2
          - name: test
            scoring: final            # MOS instead of MS-SSIM (SPEC.md section 3)
            dataset: /data/pirm2018/dped-test
            results: aggregate        # aggregate | per_image | crops
            leaderboard: hidden       # until the organisers publish it
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from services.core.errors import InvalidArgument
from services.core.track import EntryPolicy, Phase, Track
from services.scorer.scoring import TRACKS, ScoreWeights, TrackConstants

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class Results(StrEnum):
    """What a team may see of its own results in a phase."""

    AGGREGATE = "aggregate"  # the job's figures and scores only
    PER_IMAGE = "per_image"  # also each image's figures (GetJobImages)
    CROPS = "crops"  # also crops of inputs, outputs and targets (GetImageCrops)

    @property
    def per_image(self) -> bool:
        return self is not Results.AGGREGATE

    @property
    def crops(self) -> bool:
        return self is Results.CROPS


@dataclass(frozen=True)
class PhaseRule:
    name: str
    dataset: Path
    scoring: Phase = Phase.VALIDATION  # validation: MS-SSIM; final: the user study's MOS
    opens: dt.datetime | None = None  # UTC; None: open from the start
    closes: dt.datetime | None = None  # UTC; None: never closes
    submissions_per_day: int | None = None  # per team, per track, per UTC day; None: no limit
    # Whether a team's own failed submissions count against the quota; a run the platform
    # failed (a node lost, a cancelled job) never does.
    failed_count: bool = True
    results: Results = Results.PER_IMAGE
    leaderboard_public: bool = True  # False: hidden until the organisers publish it
    entry: EntryPolicy = EntryPolicy.LATEST  # the PIRM rule: the last successful submission

    def state_at(self, now: dt.datetime) -> str:
        if self.opens is not None and now < self.opens:
            return "not open"
        if self.closes is not None and now >= self.closes:
            return "closed"
        return "open"


@dataclass(frozen=True)
class TrackRule:
    track: Track
    phases: tuple[PhaseRule, ...]
    constants: TrackConstants
    baselines: dict[str, Path] = field(default_factory=dict)  # row name -> .pb

    def phase(self, name: str) -> PhaseRule:
        for phase in self.phases:
            if phase.name == name:
                return phase
        known = ", ".join(p.name for p in self.phases)
        raise InvalidArgument(f"track {self.track.value} has no phase {name!r}; its phases: "
                              f"{known}")


@dataclass(frozen=True)
class Challenge:
    title: str
    tracks: dict[Track, TrackRule]
    source: str = ""  # the file it was read from

    def track(self, track: Track) -> TrackRule:
        rule = self.tracks.get(track)
        if rule is None:
            raise InvalidArgument(f"this challenge has no track {track.value}; its tracks: "
                                  f"{', '.join(t.value for t in self.tracks)}")
        return rule

    def phase(self, track: Track, name: str) -> PhaseRule:
        return self.track(track).phase(name)


# -- reading -----------------------------------------------------------------------------------


class DefinitionError(InvalidArgument):
    """A definition file that cannot be used: the message names the file, line and field."""


def load_challenge(path: Path) -> Challenge:
    import yaml

    try:
        text = path.read_text()
    except OSError as error:
        raise DefinitionError(f"cannot read the challenge definition {path}: "
                              f"{error.strerror}") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DefinitionError(f"{path}{where}: not valid YAML: "
                              f"{getattr(error, 'problem', error)}") from None
    if root is None:
        raise DefinitionError(f"{path}: the file is empty; see the README's section for "
                              "organisers for a complete example")
    return _Reader(path, path.parent).challenge(root)


class _Reader:
    """Walks the YAML node tree, so that each error can name its line."""

    def __init__(self, file: Path, base: Path) -> None:
        self.file = file
        self.base = base  # relative dataset and model paths are relative to the file

    def fail(self, node: Any, where: str, what: str) -> DefinitionError:
        line = node.start_mark.line + 1 if node is not None else 1
        return DefinitionError(f"{self.file} line {line}: {where}: {what}")

    def mapping(self, node: Any, where: str, allowed: set[str],
                required: frozenset[str] | set[str] = frozenset()
                ) -> dict[str, tuple[Any, Any]]:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where, "expected a mapping of keys to values")
        fields: dict[str, tuple[Any, Any]] = {}
        for key, value in node.value:
            name = str(key.value)
            if name not in allowed:
                raise self.fail(key, f"{where}.{name}",
                                f"unknown field; expected one of {', '.join(sorted(allowed))}")
            if name in fields:
                raise self.fail(key, f"{where}.{name}", "given twice")
            fields[name] = (key, value)
        missing = sorted(required - set(fields))
        if missing:
            raise self.fail(node, where, f"missing {', '.join(missing)}")
        return fields

    def scalar(self, node: Any, where: str, convert: Callable[[str], T], expected: str) -> T:
        import yaml

        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, where, f"expected {expected}")
        try:
            return convert(str(node.value))
        except (ValueError, TypeError, KeyError):
            raise self.fail(node, where, f"expected {expected}, got {node.value!r}") from None

    def challenge(self, root: Any) -> Challenge:
        import yaml

        fields = self.mapping(root, "challenge", {"title", "tracks"}, {"tracks"})
        title = (self.scalar(fields["title"][1], "title", str, "a title")
                 if "title" in fields else "")
        tracks_node = fields["tracks"][1]
        if not isinstance(tracks_node, yaml.MappingNode) or not tracks_node.value:
            raise self.fail(tracks_node, "tracks", "expected a mapping of tracks (A, B)")
        tracks: dict[Track, TrackRule] = {}
        for key, value in tracks_node.value:
            track = self.scalar(key, "tracks", Track, "track A or B")
            tracks[track] = self.track(track, value)
        return Challenge(title, tracks, str(self.file))

    def track(self, track: Track, node: Any) -> TrackRule:
        import yaml

        where = f"tracks.{track.value}"
        fields = self.mapping(node, where, {"phases", "baselines", "score"}, {"phases"})
        phases_node = fields["phases"][1]
        if not isinstance(phases_node, yaml.SequenceNode) or not phases_node.value:
            raise self.fail(phases_node, f"{where}.phases", "expected a list of phases")
        phases = [self.phase(f"{where}.phases[{i}]", p) for i, p in enumerate(phases_node.value)]
        names = [p.name for p in phases]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise self.fail(phases_node.value[index], f"{where}.phases[{index}].name",
                                f"phase {name!r} is defined twice")
        baselines: dict[str, Path] = {}
        if "baselines" in fields:
            node_ = fields["baselines"][1]
            for key, value in self.mapping(node_, f"{where}.baselines",
                                           {str(k.value) for k, _ in node_.value}).values():
                baselines[str(key.value)] = self.existing_file(
                    value, f"{where}.baselines.{key.value}")
        constants = TRACKS[track]
        if "score" in fields:
            constants = self.constants(fields["score"][1], f"{where}.score", constants)
        return TrackRule(track, tuple(phases), constants, baselines)

    def constants(self, node: Any, where: str, defaults: TrackConstants) -> TrackConstants:
        fields = self.mapping(node, where, {"psnr_base", "ssim_base", "weights", "mos_ref"})
        number = "a number"
        psnr_base = (self.scalar(fields["psnr_base"][1], f"{where}.psnr_base", float, number)
                     if "psnr_base" in fields else defaults.psnr_base)
        ssim_base = (self.scalar(fields["ssim_base"][1], f"{where}.ssim_base", float, number)
                     if "ssim_base" in fields else defaults.ssim_base)
        mos_ref = (self.scalar(fields["mos_ref"][1], f"{where}.mos_ref", float, number)
                   if "mos_ref" in fields else defaults.mos_ref)
        weights = dict(defaults.weights)
        if "weights" in fields:
            node_ = fields["weights"][1]
            for name, (_, value) in self.mapping(node_, f"{where}.weights",
                                                   {"a", "b", "c"}).items():
                weights[name] = self.weights(value, f"{where}.weights.{name}")
        return TrackConstants(psnr_base, ssim_base, weights, mos_ref)

    def weights(self, node: Any, where: str) -> ScoreWeights:
        import yaml

        if not isinstance(node, yaml.SequenceNode) or len(node.value) != 3:
            raise self.fail(node, where, "expected [alpha, beta, gamma], three numbers")
        alpha, beta, gamma = (self.scalar(v, where, float, "a number") for v in node.value)
        return ScoreWeights(alpha, beta, gamma)

    def phase(self, where: str, node: Any) -> PhaseRule:
        allowed = {"name", "dataset", "scoring", "opens", "closes", "submissions_per_day",
                   "failed_submissions_count", "results", "leaderboard", "entry"}
        fields = self.mapping(node, where, allowed, {"name", "dataset"})

        def get(name: str, convert: Callable[[str], T], expected: str, default: T) -> T:
            if name not in fields:
                return default
            return self.scalar(fields[name][1], f"{where}.{name}", convert, expected)

        name = get("name", str, "a name", "")
        if not _NAME.match(name):
            raise self.fail(fields["name"][1], f"{where}.name",
                            f"a phase's name is lower-case letters, digits, - and _ (it appears "
                            f"in commands: --phase {name!r} would not do), got {name!r}")
        dataset_node = fields["dataset"][1]
        dataset = self.path(dataset_node, f"{where}.dataset")
        if not dataset.is_dir():
            raise self.fail(dataset_node, f"{where}.dataset",
                            f"the folder {dataset} does not exist on this scorer")
        opens = get("opens", _utc, "a UTC time such as 2018-06-01T00:00:00Z", None)
        closes = get("closes", _utc, "a UTC time such as 2018-07-22T23:59:59Z", None)
        if opens is not None and closes is not None and closes <= opens:
            raise self.fail(fields["closes"][1], f"{where}.closes",
                            f"the phase closes ({closes:%Y-%m-%d %H:%M}) before it opens "
                            f"({opens:%Y-%m-%d %H:%M})")
        per_day = get("submissions_per_day", _whole, "a whole number >= 0", None)
        failed = get("failed_submissions_count", _boolean, "true or false", True)
        results = get("results", Results, "aggregate, per_image or crops", Results.PER_IMAGE)
        board = get("leaderboard", _board, "public or hidden", True)
        entry = get("entry", _entry, "last (the last successful submission) or best",
                    EntryPolicy.LATEST)
        scoring = get("scoring", Phase, "validation (MS-SSIM) or final (MOS)", Phase.VALIDATION)
        return PhaseRule(name, dataset, scoring, opens, closes, per_day, failed, results, board,
                         entry)

    def path(self, node: Any, where: str) -> Path:
        raw = self.scalar(node, where, str, "a path")
        path = Path(raw)
        return (path if path.is_absolute() else self.base / path).resolve()

    def existing_file(self, node: Any, where: str) -> Path:
        path = self.path(node, where)
        if not path.is_file():
            raise self.fail(node, where, f"the file {path} does not exist on this scorer")
        return path


def _utc(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("no time zone")
    return when.astimezone(dt.UTC)


def _whole(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise ValueError(text)
    return lowered == "true"


def _board(text: str) -> bool:
    if text not in ("public", "hidden"):
        raise ValueError(text)
    return text == "public"


def _entry(text: str) -> EntryPolicy:
    return {"last": EntryPolicy.LATEST, "best": EntryPolicy.BEST}[text]
