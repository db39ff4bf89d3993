"""The README's example challenge definition (section "For organisers") is loaded and checked
as the scorer would, so that the example organisers copy stays complete and right."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import yaml

from services.core.track import EntryPolicy, Phase, Track
from services.scorer.challenge import Results, load_challenge
from services.scorer.scoring import ScoreWeights
from tests.conftest import REPO


def readme_definition() -> str:
    section = (REPO / "README.md").read_text().split("### For organisers", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match, "README.md has no yaml block under '### For organisers'"
    return match.group(1)


def test_the_readmes_challenge_definition_loads_with_every_rule(tmp_path: Path) -> None:
    text = readme_definition()
    # The folders and models it names, made where the file says (relative to it).
    plain = yaml.safe_load(text)
    for track in plain["tracks"].values():
        for model in track["baselines"].values():
            (tmp_path / model).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / model).write_bytes(b"graph")
        for phase in track["phases"]:
            (tmp_path / phase["dataset"]).mkdir(parents=True, exist_ok=True)
    (tmp_path / "challenge.yaml").write_text(text)

    challenge = load_challenge(tmp_path / "challenge.yaml")

    assert set(challenge.tracks) == {Track.A, Track.B}
    a, b = challenge.tracks[Track.A], challenge.tracks[Track.B]
    assert set(b.baselines) == {"SRCNN", "DPED ResNet"}
    assert a.baselines["SRCNN"] == (tmp_path / "models/div2k_srcnn.pb").resolve()
    assert a.constants.psnr_base == 26.5 and a.constants.mos_ref == 2.5
    assert a.constants.weights["c"] == ScoreWeights(2, 200, 1.5)
    validation, test = a.phases
    assert validation.dataset == (tmp_path / "data/div2k").resolve()
    assert validation.opens == dt.datetime(2018, 6, 1, tzinfo=dt.UTC)
    assert validation.closes == dt.datetime(2018, 7, 22, 23, 59, 59, tzinfo=dt.UTC)
    assert validation.submissions_per_day == 2 and validation.failed_count
    assert validation.results is Results.PER_IMAGE and validation.leaderboard_public
    assert validation.entry is EntryPolicy.LATEST and validation.scoring is Phase.VALIDATION
    assert test.scoring is Phase.FINAL and test.results is Results.AGGREGATE
    assert not test.leaderboard_public and test.submissions_per_day == 1
    assert [p.name for p in b.phases] == ["validation", "test"]
    assert b.phases[1].results is Results.AGGREGATE and not b.phases[1].leaderboard_public
