"""The challenge hosted end to end: an organiser's definition (two tracks, a hidden test phase, a
closed one, one not open yet), two teams with their own tokens through validation, quota
refusals, the closed phase, a final selection, an organiser's rerun onto the test data, the
published tables; no RPC a team makes reveals the test set's images."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from pirm.v1 import common_pb2, scorer_pb2

from services.client import ScorerClient, leaderboard_rows
from services.common.auth import Tokens
from services.common.server import RunningServer
from services.common.transport import ServerSecurity
from services.core.channel import ChannelSecurity
from services.core.track import Track
from services.scorer.challenge import load_challenge
from services.scorer.server import ScorerConfig
from services.scorer.server import create_server as create_scorer
from tests.cluster import TEST_TIMING, Cluster, sample_dataset
from tests.integration.helpers import graph_bytes

TOKENS = {"alpha": "alpha-token-0123456789", "beta": "beta-token-0123456789",
          "jury": "jury-token-0123456789"}
TOKENS_TEXT = (f"team alpha {TOKENS['alpha']}\nteam beta {TOKENS['beta']}\n"
               f"organiser jury {TOKENS['jury']}\n")
Code = grpc.StatusCode
QUEUED, SUCCEEDED, FAILED = (scorer_pb2.JOB_STATE_QUEUED, scorer_pb2.JOB_STATE_SUCCEEDED,
                             scorer_pb2.JOB_STATE_FAILED)


def model(gain: float) -> bytes:
    def build(tf: Any, x: Any) -> None:
        tf.identity(x * gain + (1 - gain) / 2, name="output")
    return graph_bytes(build)


def inverted() -> bytes:
    """An output anti-correlated with its target: track B's MS-SSIM (the NumPy flavour, no
    ReLU) is undefined, and the job fails naming the image."""
    def build(tf: Any, x: Any) -> None:
        tf.identity(1.0 - x, name="output")
    return graph_bytes(build)


def cropped() -> bytes:
    """An output one row short of its input: the model's own failure."""
    def build(tf: Any, x: Any) -> None:
        tf.identity(x[:, 1:], name="output")
    return graph_bytes(build)


@dataclass
class Hosted:
    scorer: RunningServer
    test_names: set[str]  # the hidden test set's file names
    test_folder: str
    root: Path  # the definition, its data and the store

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.scorer.port}"

    def client(self, who: str) -> ScorerClient:
        return ScorerClient(self.target, security=ChannelSecurity(TOKENS[who]))


DEFINITION = """\
title: A hosted test challenge
tracks:
  A:
    phases:
      - name: validation
        dataset: div2k
        submissions_per_day: 2
        failed_submissions_count: false
      - name: warmup
        dataset: div2k
        closes: 2020-01-01T00:00:00Z
  B:
    baselines:
      SRCNN: baseline.pb
    phases:
      - name: validation
        dataset: dped
        submissions_per_day: 2
      - name: test
        scoring: final
        dataset: dped-test
        results: aggregate
        leaderboard: hidden
        opens: 2020-01-01T00:00:00Z
      - name: later
        dataset: dped
        opens: 2099-01-01T00:00:00Z
"""


@pytest.fixture(scope="module")
def hosted(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosted]:
    hosted = host(cluster, tmp_path_factory.mktemp("hosted"))
    yield hosted
    hosted.scorer.stop(grace=1.0)


def host(cluster: Cluster, root: Path) -> Hosted:
    """A scorer running the DEFINITION's challenge on sample data made in `root`, its baseline
    jobs queued (stop its `scorer` when done)."""
    sample_dataset(root, Track.A, patches_per_photo=1)
    dped = sample_dataset(root, Track.B, patches_per_photo=2)
    # The hidden test set: other pixels, and file names a team must never read.
    test = root / "dped-test"
    shutil.copytree(dped, test)
    for side in ("iphone", "canon"):
        for path in (test / "patches" / side).iterdir():
            path.rename(path.with_name(f"secret-{path.name}"))
    test_names = {p.name for p in test.rglob("*") if p.is_file()}
    (root / "baseline.pb").write_bytes(model(1.0))
    (root / "challenge.yaml").write_text(DEFINITION)
    scorer = create_scorer("127.0.0.1:0", ScorerConfig(
        inference=cluster.target(cluster.inference), metrics=cluster.target(cluster.metrics),
        store=root / "scorer.db", state_dir=root, timing=TEST_TIMING, concurrency=2,
        security=ServerSecurity(Tokens.parse(TOKENS_TEXT, "tokens")),
        challenge=load_challenge(root / "challenge.yaml")))
    return Hosted(scorer, test_names, str(test), root)


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def utc_day() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def retry_after(error: grpc.RpcError) -> int:
    trailing: Any = error.trailing_metadata() or ()
    return int({str(key): str(value) for key, value in trailing}["retry-after-s"])


def revealed(hosted: Hosted, message: object) -> list[str]:
    """The test set's names or folder found anywhere in what a team received."""
    text = json_format.MessageToJson(message) if hasattr(message, "DESCRIPTOR") else str(message)
    return [name for name in [*hosted.test_names, hosted.test_folder] if name in text]


def test_a_challenge_from_validation_to_the_published_tables(hosted: Hosted) -> None:
    alpha, beta, jury = (hosted.client(who) for who in ("alpha", "beta", "jury"))
    seen: list[object] = []  # everything a team received, checked for the test set at the end

    # What teams see of the challenge: the phases, their state and the quota left.
    challenge = alpha.challenge()
    seen.append(challenge)
    phases = {(t.track, p.name): p for t in challenge.tracks for p in t.phases}
    a, b = common_pb2.TRACK_A, common_pb2.TRACK_B
    assert phases[(b, "validation")].state == "open"
    assert phases[(b, "validation")].submissions_left_today == 2
    assert phases[(b, "test")].results == "aggregate"
    assert not phases[(b, "test")].leaderboard_public
    assert phases[(a, "warmup")].state == "closed" and phases[(b, "later")].state == "not open"

    # Teams submit models, not datasets; a closed phase and one not open yet refuse them.
    error = refused(lambda: alpha.submit("B", model(0.9), "/etc", phase_name="validation"))
    assert error.code() == Code.INVALID_ARGUMENT and "not datasets" in error.details()
    error = refused(lambda: alpha.submit("B", model(0.9)))
    assert error.code() == Code.INVALID_ARGUMENT and "name the phase" in error.details()
    error = refused(lambda: alpha.submit("A", model(0.9), phase_name="warmup"))
    assert error.code() == Code.FAILED_PRECONDITION
    assert "closed at 2020-01-01 00:00 UTC" in error.details()
    error = refused(lambda: alpha.submit("B", model(0.9), phase_name="later"))
    assert error.code() == Code.FAILED_PRECONDITION and "opens at 2099-01-01" in error.details()
    assert retry_after(error) > 0

    # Validation: two submissions a day per team and track; the third is refused until 00:00.
    submitted_on = utc_day()
    first = alpha.submit("B", model(0.9), phase_name="validation")
    second = alpha.submit("B", model(0.8), phase_name="validation")
    other = beta.submit("B", model(0.85), phase_name="validation")
    error = refused(lambda: alpha.submit("B", model(0.7), phase_name="validation"))
    assert error.code() == Code.RESOURCE_EXHAUSTED, error.details()
    assert "made its 2 submissions of the day (UTC)" in error.details()
    assert 0 < retry_after(error) <= 86400
    assert first.dataset == "" and first.phase_name == "validation"  # no path to a team
    for job in (first, second, other):
        seen.append(job)
        done = (alpha if job.team == "alpha" else beta).wait(job.job_id)
        assert done.state == SUCCEEDED, done
    left = alpha.challenge().tracks[1].phases[0].submissions_left_today
    # None left today, unless the UTC day changed since the submissions (the quota is whole).
    assert left == (0 if utc_day() == submitted_on else 2)

    # Track A counts a team's own failures out: two failed submissions leave the quota whole.
    failing = [alpha.submit("A", cropped(), phase_name="validation") for _ in range(2)]
    for job in failing:
        failed = alpha.wait(job.job_id)
        assert failed.state == FAILED and failed.failure_kind == "model", failed
    assert alpha.submit("A", model(0.9), phase_name="validation").state == QUEUED

    # The final selection: alpha's first submission stands for it, not its latest.
    selected = alpha.select(first.job_id)
    assert selected.selected
    rows = leaderboard_rows(alpha.leaderboard("B", phase_name="validation"))
    assert {r["team"]: r["job_id"] for r in rows}["alpha"] == first.job_id
    assert [r["team"] for r in rows if r["baseline"]] == ["SRCNN"]  # a row of its own
    error = refused(lambda: beta.select(first.job_id))  # another team's job does not exist
    assert error.code() == Code.NOT_FOUND

    # The test phase: aggregate results only, a hidden leaderboard.
    tested = [alpha.submit("B", model(0.9), phase_name="test"),
              alpha.submit("B", inverted(), phase_name="test")]
    finished = [alpha.wait(job.job_id) for job in tested]
    seen.extend(finished)
    assert finished[0].state == SUCCEEDED and finished[1].state == FAILED
    assert "<an image>" in finished[1].error, finished[1].error  # the image's name kept back
    organisers_view = jury.get(tested[1].job_id)
    assert any(name in organisers_view.error for name in hosted.test_names)
    for call in (lambda: alpha.job_images(tested[0].job_id),
                 lambda: alpha.image_crops(tested[0].job_id, ["secret-0.jpg"])):
        error = refused(call)
        assert error.code() == Code.PERMISSION_DENIED, error.details()
        assert "aggregate results only" in error.details()
        seen.append(error.details())
    error = refused(lambda: alpha.leaderboard("B", phase_name="test"))
    assert error.code() == Code.FAILED_PRECONDITION and "hidden" in error.details()
    seen.extend(alpha.jobs())
    seen.append(alpha.get(tested[0].job_id))

    # The organisers rerun the validation phase's standing submissions on the test data.
    reruns = jury.rerun("B", "validation", into_phase_name="test")
    assert sorted(j.rerun_of for j in reruns) == sorted([first.job_id, other.job_id,
                                                         _baseline(jury, "validation")])
    assert all(j.phase_name == "test" for j in reruns)
    again = jury.rerun("B", "validation", into_phase_name="test")  # asked twice: the same jobs
    assert sorted(j.job_id for j in again) == sorted(j.job_id for j in reruns)
    for job in reruns:
        assert jury.wait(job.job_id).state == SUCCEEDED
    # The user study's MOS for each finalist, then the board is published.
    board = jury.leaderboard("B", phase_name="test")
    assert board.hidden and not board.entries  # the final phase ranks jobs with a MOS only
    for job in [*reruns, finished[0]]:
        jury.set_mos(job.job_id, 2.5)
    published = jury.publish("B", "test")
    assert not published.hidden
    rows = leaderboard_rows(alpha.leaderboard("B", phase_name="test"))
    assert {r["team"] for r in rows} == {"alpha", "beta", "SRCNN"}
    assert [r["rank"] for r in rows] == [1, 2, 3]
    seen.append(alpha.leaderboard("B", phase_name="test"))

    # Nothing a team received names the test set.
    leaks = [leak for message in seen for leak in revealed(hosted, message)]
    assert leaks == []


def _baseline(client: ScorerClient, phase: str) -> str:
    return next(j.job_id for j in client.jobs() if j.baseline and j.phase_name == phase
                and j.track == common_pb2.TRACK_B)
