"""The organisers' challenge definition (services/scorer/challenge.py): read, and refused with the
file, the line and the field when it is wrong."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from services.core.track import EntryPolicy, Phase, Track
from services.scorer.challenge import DefinitionError, Results, load_challenge
from services.scorer.samples import make_sample_dataset
from services.scorer.scoring import TRACKS


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("definition")
    make_sample_dataset(root, Track.B, patches_per_photo=1)
    (root / "srcnn.pb").write_bytes(b"model")
    return root


def write(data: Path, text: str) -> Path:
    path = data / "challenge.yaml"
    path.write_text(text)
    return path


COMPLETE = """\
title: A test challenge
tracks:
  B:
    baselines:
      SRCNN: srcnn.pb
    score:
      psnr_base: 20.5
      weights:
        c: [2, 200, 3]
    phases:
      - name: validation
        dataset: dped
        opens: 2018-06-01T00:00:00Z
        closes: 2018-07-22T23:59:59Z
        submissions_per_day: 2
        failed_submissions_count: false
      - name: test
        scoring: final
        dataset: dped
        results: aggregate
        leaderboard: hidden
        entry: best
"""


def test_a_complete_definition(data: Path) -> None:
    challenge = load_challenge(write(data, COMPLETE))
    track = challenge.track(Track.B)
    validation, test = track.phases
    assert challenge.title == "A test challenge" and list(challenge.tracks) == [Track.B]
    assert track.baselines == {"SRCNN": data / "srcnn.pb"}
    assert validation.dataset == data / "dped" and validation.scoring is Phase.VALIDATION
    assert validation.opens == dt.datetime(2018, 6, 1, tzinfo=dt.UTC)
    assert validation.submissions_per_day == 2 and not validation.failed_count
    assert validation.results is Results.PER_IMAGE and validation.leaderboard_public
    assert validation.entry is EntryPolicy.LATEST  # the PIRM rule: the last successful one
    assert test.scoring is Phase.FINAL and test.results is Results.AGGREGATE
    assert not test.leaderboard_public and test.entry is EntryPolicy.BEST
    assert test.submissions_per_day is None and test.opens is None
    # The score constants: those given, SPEC.md's for the rest.
    assert track.constants.psnr_base == 20.5
    assert track.constants.ssim_base == TRACKS[Track.B].ssim_base
    assert track.constants.weights["c"].gamma == 3
    assert track.constants.weights["a"] == TRACKS[Track.B].weights["a"]
    assert validation.state_at(dt.datetime(2018, 5, 1, tzinfo=dt.UTC)) == "not open"
    assert validation.state_at(dt.datetime(2018, 7, 1, tzinfo=dt.UTC)) == "open"
    assert validation.state_at(dt.datetime(2018, 7, 23, tzinfo=dt.UTC)) == "closed"


@pytest.mark.parametrize(("change", "error"), [
    (("submissions_per_day: 2", "submissions_per_day: two"),
     r"line 15: tracks\.B\.phases\[0\]\.submissions_per_day: expected a whole number >= 0, "
     r"got 'two'"),
    (("results: aggregate", "results: everything"),
     r"line 20: tracks\.B\.phases\[1\]\.results: expected aggregate, per_image or crops"),
    (("dataset: dped\n        results", "dataset: nowhere\n        results"),
     r"line 19: tracks\.B\.phases\[1\]\.dataset: the folder .*nowhere does not exist"),
    (("closes: 2018-07-22T23:59:59Z", "closes: 2018-05-01T00:00:00Z"),
     r"line 14: tracks\.B\.phases\[0\]\.closes: the phase closes \(2018-05-01 00:00\) before"),
    (("opens: 2018-06-01T00:00:00Z", "opens: 2018-06-01T00:00:00"),
     r"line 13: tracks\.B\.phases\[0\]\.opens: expected a UTC time"),
    (("- name: test", "- name: validation"),
     r"line 17: tracks\.B\.phases\[1\]\.name: phase 'validation' is defined twice"),
    (("- name: test", "- name: Test Phase"),
     r"tracks\.B\.phases\[1\]\.name: a phase's name is lower-case letters"),
    (("  B:", "  C:"), r"line 3: tracks: expected track A or B, got 'C'"),
    (("SRCNN: srcnn.pb", "SRCNN: missing.pb"),
     r"line 5: tracks\.B\.baselines\.SRCNN: the file .*missing\.pb does not exist"),
    (("entry: best", "entrance: best"),
     r"line 22: tracks\.B\.phases\[1\]\.entrance: unknown field; expected one of"),
    (("weights:\n        c: [2, 200, 3]", "weights:\n        c: [2, 200]"),
     r"line 9: tracks\.B\.score\.weights\.c: expected \[alpha, beta, gamma\]"),
])
def test_errors_name_the_line_and_the_field(data: Path, change: tuple[str, str],
                                            error: str) -> None:
    old, new = change
    assert old in COMPLETE
    path = write(data, COMPLETE.replace(old, new, 1))
    with pytest.raises(DefinitionError, match=error) as raised:
        load_challenge(path)
    assert str(raised.value).startswith(str(path))


def test_what_is_not_yaml_or_empty(data: Path) -> None:
    with pytest.raises(DefinitionError, match=r"line 3: not valid YAML: expected ',' or ']'"):
        load_challenge(write(data, "tracks:\n  B: [unclosed\n"))
    with pytest.raises(DefinitionError, match="the file is empty"):
        load_challenge(write(data, ""))
    with pytest.raises(DefinitionError, match="cannot read the challenge definition"):
        load_challenge(data / "missing.yaml")
    with pytest.raises(DefinitionError, match=r"line 1: challenge: missing tracks"):
        load_challenge(write(data, "title: only a title\n"))
