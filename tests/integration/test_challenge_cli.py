"""The hosted challenge through the `pirm` command line, as teams and organisers run it (the
installed console script, each team with its own token): the definition as a team sees it,
submitting to a phase, the final selection, a rerun, publishing a hidden board, the exported
tables (checked against the SPEC formula applied to the leaderboard RPC's figures, and parsed
back from CSV, Markdown and LaTeX), and a team's report of a hidden phase."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from pirm.v1 import inference_pb2, inference_pb2_grpc, scorer_pb2

from services.client import ScorerClient, leaderboard_rows
from services.core.tensors import to_tensor
from tests.cluster import Cluster
from tests.integration.test_challenge import TOKENS, Hosted, host, model
from tests.integration.test_cli import PIRM

InferenceStub = inference_pb2_grpc.InferenceServiceStub
# SPEC.md section 3, track B: PSNR_base, SSIM_base, (alpha, beta, gamma) of scores A, B, C.
PSNR_BASE, SSIM_BASE = 21.0, 0.90
WEIGHTS = {"a": (4, 100, 2), "b": (1, 400, 2), "c": (2, 200, 2.9)}
KAPPA, MOS_REF = 0.0719, 2.295

@dataclass
class Commands:
    """The hosted challenge of test_challenge.py (track B: validation with a quota of 2, a
    hidden test phase with aggregate results only, the SRCNN baseline), through `pirm`."""

    hosted: Hosted
    release: Callable[[], object]  # ends the device hold (hold_device)
    jobs: dict[str, Any] = field(default_factory=dict)  # what one test leaves to the next

    @property
    def root(self) -> Path:
        return self.hosted.root

    def client(self, who: str) -> ScorerClient:
        return self.hosted.client(who)

    def pirm(self, who: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([PIRM, *args, "--scorer", self.hosted.target, "--token",
                               TOKENS[who]],
                              capture_output=True, text=True, timeout=300, cwd=self.root)
        assert not check or done.returncode == 0, done.stderr
        return done

    def json(self, who: str, *args: str) -> Any:
        return json.loads(self.pirm(who, *args, "--json").stdout)


@pytest.fixture(scope="module")
def hosted(cluster: Cluster, inference_stub: InferenceStub,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Commands]:
    # The inference device held by a long timing until the first test has seen its jobs
    # queued: the baseline jobs then take the scorer's two slots and wait for it, and the
    # teams' jobs wait in the queue (jobs of these models take a second otherwise).
    held = hold_device(inference_stub)
    running = host(cluster, tmp_path_factory.mktemp("hosted-cli"))
    for gain in (0.9, 0.8, 0.85):
        (running.root / f"gain-{gain}.pb").write_bytes(model(gain))
    commands = Commands(running, release=held.cancel)
    yield commands
    commands.release()
    running.scorer.stop(grace=1.0)


def hold_device(stub: InferenceStub) -> grpc.Future:
    """A Benchmark that would last ten minutes (cancel the future to end it), once it holds
    the device: an inference call meanwhile waits past its deadline."""
    stub.LoadModel(inference_pb2.LoadModelRequest(name="device-hold", graph_def=model(1.0)),
                   timeout=60)
    image = to_tensor(np.zeros((1, 16, 16, 3), np.float32))
    held = stub.Benchmark.future(inference_pb2.BenchmarkRequest(
        model="device-hold", input=image, options=inference_pb2.TimingOptions(
            warmup_runs=0, min_runs=1, min_seconds=600.0, max_runs=10**9)),
        timeout=900)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            stub.Infer(inference_pb2.InferRequest(model="device-hold", input=image), timeout=1.0)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return held
            raise
        time.sleep(0.1)
    held.cancel()
    raise AssertionError("the long Benchmark never held the inference device")


def expected_score(row: dict[str, Any], by: str, final: bool) -> float:
    """SPEC.md section 3 from the leaderboard RPC's figures."""
    alpha, beta, gamma = WEIGHTS[by]
    quality = KAPPA * (row["mos"] - MOS_REF) if final else row["msssim"] - SSIM_BASE
    speed = min(4.0, row["baseline_runtime_ms"] / row["runtime_ms"])
    return float(alpha * (row["psnr"] - PSNR_BASE) + beta * quality + gamma * speed)


# The tests below run in this order, each going on from where the one before left the challenge.


def test_teams_see_the_challenge_and_submit_to_its_phases(hosted: Commands) -> None:
    # What a team sees of the challenge: phases, their state and its quota left today.
    seen = hosted.json("alpha", "challenge")
    track_b = next(t for t in seen["tracks"] if t["track"] == "B")
    phases = {p["name"]: p for p in track_b["phases"]}
    assert track_b["baselines"] == ["SRCNN"]
    assert phases["validation"]["state"] == "open"
    assert phases["validation"]["submissions_left_today"] == 2
    assert phases["test"]["results"] == "aggregate" and not phases["test"]["leaderboard_public"]
    text = hosted.pirm("alpha", "challenge").stdout
    assert re.search(r"validation\s+validation\s+open .* 2/day, 2 left", text), text

    # Teams submit a model to a phase; the phase's dataset is used.
    first = hosted.json("alpha", "submit", "--track", "B", "--phase", "validation",
                        "gain-0.9.pb")
    second = hosted.json("alpha", "submit", "--track", "B", "--phase", "validation",
                         "gain-0.8.pb")
    other = hosted.json("beta", "submit", "--track", "B", "--phase", "validation",
                        "gain-0.85.pb")
    assert first["phase_name"] == "validation" and "dataset" not in first
    assert first["state"] == "QUEUED" and first["queue_position"] >= 1
    over = hosted.pirm("alpha", "submit", "--track", "B", "--phase", "validation",
                       "gain-0.9.pb", check=False)
    assert over.returncode == 2 and over.stderr.startswith("pirm: RESOURCE_EXHAUSTED: ")
    assert "Traceback" not in over.stderr
    nowhere = hosted.pirm("alpha", "submit", "--track", "B", "--phase", "nowhere",
                          "gain-0.9.pb", check=False)
    assert nowhere.returncode == 2 and "no phase 'nowhere'" in nowhere.stderr
    # Where the queued jobs stand: their place and expected start.
    queued = hosted.pirm("jury", "jobs").stdout
    assert re.search(rf"{first['job_id']} .* QUEUED .* #\d+ in queue, starts ~", queued), queued
    hosted.release()
    hosted.jobs.update(first=first, second=second, other=other)


def test_teams_select_and_organisers_export_the_validation_table(hosted: Commands) -> None:
    first, other = hosted.jobs["first"], hosted.jobs["other"]
    for job in (first, hosted.jobs["second"], other):
        with hosted.client(job["team"]) as client:
            assert client.wait(job["job_id"]).state == scorer_pb2.JOB_STATE_SUCCEEDED

    # The final selection: alpha's first submission stands for it, not its latest.
    assert hosted.json("alpha", "select", first["job_id"])["selected"]
    rows = hosted.json("alpha", "leaderboard", "--track", "B", "--phase", "validation")
    assert {r["team"]: r["job_id"] for r in rows}["alpha"] == first["job_id"]
    assert [r["team"] for r in rows if r["baseline"]] == ["SRCNN"]
    board = hosted.pirm("alpha", "leaderboard", "--track", "B", "--phase", "validation").stdout
    assert re.search(r"SRCNN .*\(baseline\)", board), board

    # The exported tables against the SPEC formula on the RPC's own figures, each format.
    with hosted.client("jury") as jury:
        figures = leaderboard_rows(jury.leaderboard("B", by="b", phase_name="validation"))
    assert len(figures) == 3
    expected = sorted(figures, key=lambda r: -expected_score(r, "b", False))
    tables = {form: hosted.pirm("jury", "export", "--track", "B", "--phase", "validation",
                                "--format", form, "--score", "b").stdout
              for form in ("csv", "md", "latex")}
    check_table(parse_csv(tables["csv"]), expected, final=False, exact=True)
    check_table(parse_markdown(tables["md"]), expected, final=False, exact=False)
    check_table(parse_latex(tables["latex"]), expected, final=False, exact=False)
    out = hosted.root / "validation.md"
    hosted.pirm("jury", "export", "--track", "B", "--phase", "validation", "-o", str(out))
    assert parse_markdown(out.read_text())[0]["Team"] in {r["team"] for r in figures}
    hosted.jobs["baseline"] = [r for r in rows if r["baseline"]]


def test_organisers_rerun_and_publish_the_hidden_phase(hosted: Commands) -> None:
    first, other = hosted.jobs["first"], hosted.jobs["other"]
    # The organisers rerun the standing submissions on the hidden test data.
    reruns = hosted.json("jury", "rerun", "--track", "B", "--phase", "validation", "--into",
                         "test", "--wait")
    assert sorted(j["rerun_of"] for j in reruns) == sorted(
        [first["job_id"], other["job_id"], *(r["job_id"] for r in hosted.jobs["baseline"])])
    assert all(j["state"] == "SUCCEEDED" and j["phase_name"] == "test" for j in reruns)
    with hosted.client("jury") as jury:
        for index, job in enumerate(reruns):
            jury.set_mos(job["job_id"], 2.2 + 0.2 * index)

    # The hidden board: refused to a team, cleanly, until published.
    hidden = hosted.pirm("alpha", "leaderboard", "--track", "B", "--phase", "test", check=False)
    assert hidden.returncode == 2 and hidden.stderr.startswith("pirm: FAILED_PRECONDITION: ")
    assert "hidden" in hidden.stderr and "Traceback" not in hidden.stderr
    assert "hidden from teams" in hosted.pirm("jury", "leaderboard", "--track", "B", "--phase",
                                              "test").stdout
    published = hosted.pirm("jury", "publish", "--track", "B", "--phase", "test").stdout
    assert "is public" in published
    final = hosted.json("alpha", "leaderboard", "--track", "B", "--phase", "test")
    assert {r["team"] for r in final} == {"alpha", "beta", "SRCNN"}
    with hosted.client("alpha") as alpha:
        figures = leaderboard_rows(alpha.leaderboard("B", by="c", phase_name="test"))
    expected = sorted(figures, key=lambda r: -expected_score(r, "c", True))
    table = hosted.pirm("alpha", "export", "--track", "B", "--phase", "test", "--format", "csv",
                        "--score", "c").stdout
    check_table(parse_csv(table), expected, final=True, exact=True)
    hosted.jobs["reruns"] = reruns


def test_jobs_say_where_they_stand_and_a_team_report_keeps_the_hidden_images(
        hosted: Commands) -> None:
    reruns = hosted.jobs["reruns"]
    # Where jobs stand, and what a team's report of the hidden phase shows.
    jobs = hosted.pirm("jury", "jobs").stdout
    assert re.search(rf"{reruns[0]['job_id']} .* rerun of {reruns[0]['rerun_of']}", jobs), jobs
    alpha_rerun = next(j for j in reruns if j["team"] == "alpha")
    report = hosted.json("alpha", "report", alpha_rerun["job_id"], "--out", "report-alpha")
    assert report["crops"] == [] and report["entries"] == 3
    assert any("per-image figures" in note for note in report["notes"]), report
    html = (hosted.root / "report-alpha" / "report.html").read_text()
    assert not [name for name in hosted.hosted.test_names if name in html]
    assert "per-image figures and crops not shown" in html


def check_table(rows: list[dict[str, str]], expected: list[dict[str, Any]], final: bool,
                exact: bool) -> None:
    """The table's rows against the leaderboard's figures: same teams in the order of the
    score, each figure equal (to the printed digits), baselines marked, MOS only if final."""
    def close(text: str, value: float | None, digits: int) -> None:
        if value is None or (value == 0 and text in ("", "-")):
            assert text in ("", "-"), text
        elif exact:
            assert float(text) == pytest.approx(value, rel=1e-12)
        else:
            assert abs(float(text) - value) <= 0.5 * 10 ** -digits + 1e-9, (text, value)

    assert [r["Team"] for r in rows] == [e["team"] for e in expected]
    assert ("MOS" in rows[0]) == final
    for row, e in zip(rows, expected, strict=True):
        assert (row["Baseline"] == "yes") == e["baseline"]
        close(row["PSNR"], e["psnr"], 2)
        close(row["MS-SSIM"], e["msssim"], 4)
        if final:
            close(row["MOS"], e["mos"], 2)
        close(row["CPU runtime, ms"], e["runtime_ms"], 1)
        close(row["RAM, MB"], e["peak_memory_mb"], 0)
        for by in "abc":
            close(row[f"Score {by.upper()}"], expected_score(e, by, final), 2)


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _unmarked(cells: dict[str, str]) -> dict[str, str]:
    team = cells["Team"]
    cells["Baseline"] = "yes" if team.endswith(" (baseline)") else "no"
    cells["Team"] = team.removesuffix(" (baseline)")
    return cells


def parse_markdown(text: str) -> list[dict[str, str]]:
    lines = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in text.splitlines() if line.startswith("|")]
    header, body = lines[0], lines[2:]
    assert all(set(c) <= set(":-") for c in lines[1])
    return [_unmarked(dict(zip(header, cells, strict=True))) for cells in body]


def parse_latex(text: str) -> list[dict[str, str]]:
    assert text.startswith(r"\begin{tabular}") and text.rstrip().endswith(r"\end{tabular}")
    lines = [line.removesuffix(r"\\").strip() for line in text.splitlines()
             if line.endswith(r"\\")]
    header, body = lines[0], lines[1:]

    def cells(line: str) -> list[str]:
        return [c.strip().replace(r"\_", "_").replace(r"\#", "#") for c in line.split(" & ")]

    return [_unmarked(dict(zip(cells(header), cells(line), strict=True))) for line in body]
