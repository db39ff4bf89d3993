"""The final phase's user study end to end: a hosted challenge whose final phase has two teams'
submissions and a baseline, a study over them, the rating page (its own web service, talking
gRPC to the scorer) played by several raters in a real browser (Debian's Chromium driven by
chromedriver through Selenium) — clicks and keys, a reload mid-study, a double click, a
retried request, one careless rater — then the checks: the stored ratings are exactly those
given, the careless rater is excluded, the MOS equals a plain computation of the paper's
procedure from the stored ratings, and the final leaderboard ranks with it. Plus the errors:
an unknown or finished rater token, a task not given to the rater, a phase without
finalists."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pirm.v1 import scorer_pb2

from services.client import ScorerClient
from services.common.auth import Tokens
from services.common.server import RunningServer
from services.common.transport import ServerSecurity
from services.core.channel import ChannelSecurity
from services.core.track import Phase, Track
from services.scorer.challenge import load_challenge
from services.scorer.server import ScorerConfig
from services.scorer.server import create_server as create_scorer
from services.scorer.telemetry import REGISTRY
from services.study_web.server import RunningWeb
from services.study_web.server import create_server as create_web
from tests.cluster import TEST_TIMING, Cluster, sample_dataset
from tests.integration.helpers import graph_bytes, scrape, total

TOKENS = {"alpha": "alpha-token-0123456789", "beta": "beta-token-0123456789",
          "jury": "jury-token-0123456789", "web": "web-token-0123456789abc"}
TOKENS_TEXT = (f"team alpha {TOKENS['alpha']}\nteam beta {TOKENS['beta']}\n"
               f"organiser jury {TOKENS['jury']}\ninternal web {TOKENS['web']}\n")
DEFINITION = """\
title: A challenge with a user study
tracks:
  A:
    phases:
      - name: final
        scoring: final
        dataset: div2k
  B:
    baselines:
      SRCNN: baseline.pb
    phases:
      - name: test
        scoring: final
        dataset: dped
"""
CAREFUL_WAIT_S = 1.2  # a careful rater looks this long at least; the rule's floor is 1.0 s
RULE = scorer_pb2.StudyRule(min_median_seconds=1.0)
Code = grpc.StatusCode


def one(values: Iterable[float]) -> float:
    (value,) = values
    return value


def model(gain: float) -> bytes:
    def build(tf: Any, x: Any) -> None:
        tf.identity(x * gain + (1 - gain) / 2, name="output")
    return graph_bytes(build)


@dataclass
class Hosted:
    scorer: RunningServer
    web: RunningWeb
    store: Path
    jobs: dict[str, str]  # team -> its final job

    def client(self, who: str) -> ScorerClient:
        return ScorerClient(f"127.0.0.1:{self.scorer.port}",
                            security=ChannelSecurity(TOKENS[who]))

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return ("--scorer", f"127.0.0.1:{self.scorer.port}", "--token", TOKENS["jury"])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.web.port}"


@pytest.fixture(scope="module")
def hosted(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosted]:
    root = tmp_path_factory.mktemp("study")
    sample_dataset(root, Track.A, patches_per_photo=1)
    sample_dataset(root, Track.B, patches_per_photo=2)
    (root / "baseline.pb").write_bytes(model(1.0))
    (root / "challenge.yaml").write_text(DEFINITION)
    scorer = create_scorer("127.0.0.1:0", ScorerConfig(
        inference=cluster.target(cluster.inference), metrics=cluster.target(cluster.metrics),
        store=root / "scorer.db", state_dir=root / "var", timing=TEST_TIMING, concurrency=2,
        security=ServerSecurity(Tokens.parse(TOKENS_TEXT, "tokens")),
        challenge=load_challenge(root / "challenge.yaml")))
    web = create_web("127.0.0.1", 0, f"127.0.0.1:{scorer.port}", TOKENS["web"])
    hosted = Hosted(scorer, web, root / "scorer.db", {})
    for team, gain in (("alpha", 0.9), ("beta", 0.6)):
        client = hosted.client(team)
        job = client.submit(Track.B, model(gain), phase=Phase.FINAL, phase_name="test")
        hosted.jobs[team] = job.job_id
    jury = hosted.client("jury")
    for job in jury.jobs(track=Track.B):
        done = jury.wait(job.job_id, timeout_s=600)
        assert done.state == scorer_pb2.JOB_STATE_SUCCEEDED, done.error
        assert not done.result.HasField("mos")  # waiting for the study
        if done.baseline:
            hosted.jobs[done.team] = done.job_id
    yield hosted
    web.stop()
    scorer.stop(grace=1.0)


@pytest.fixture(scope="module")
def study(hosted: Hosted) -> scorer_pb2.Study:
    return hosted.client("jury").create_study(
        "final-b", Track.B, "test", raters=4, ratings_per_pair=2, images=3, seed=5,
        controls_per_rater=2, repeats_per_rater=1, rule=RULE)


def pirm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "pirm"), *args],
                          capture_output=True, text=True, timeout=120, check=True)


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def http(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_study_of_the_finalists_with_their_outputs_kept_as_png(hosted: Hosted,
                                                                 study: scorer_pb2.Study
                                                                 ) -> None:
    teams = [(m.team, m.baseline, m.job_id) for m in study.methods]
    assert teams == [("alpha", False, hosted.jobs["alpha"]), ("beta", False, hosted.jobs["beta"]),
                     ("SRCNN", True, hosted.jobs["SRCNN"])]
    assert len(study.images) == 3 and len(study.raters) == 4 and study.state == "OPEN"
    folder = hosted.store.parent / "var" / "studies" / "final-b"
    pngs = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert pngs == sorted([f"{kind}/{i}.png" for kind in ("input", "degraded") for i in range(3)]
                          + [f"result/{m}/{i}.png" for m in range(3) for i in range(3)])
    # The baseline is the identity: its kept output is the input, pixel for pixel.
    assert (folder / "result/2/0.png").read_bytes() == (folder / "input/0.png").read_bytes()
    assert (folder / "result/0/0.png").read_bytes() != (folder / "input/0.png").read_bytes()


def test_bad_requests_get_clear_errors(hosted: Hosted, study: scorer_pb2.Study) -> None:
    jury, web = hosted.client("jury"), hosted.client("web")
    error = refused(lambda: jury.create_study("empty", Track.A, "final", raters=2))
    assert error.code() == Code.INVALID_ARGUMENT and "no finalists" in error.details()
    error = refused(lambda: hosted.client("alpha").create_study("mine", Track.B, "test", 2))
    assert error.code() == Code.PERMISSION_DENIED
    error = refused(lambda: hosted.client("alpha").next_study_task(study.raters[0].token))
    assert error.code() == Code.PERMISSION_DENIED  # only the web service serves raters
    for call in (lambda: hosted.client("alpha").study("final-b"),  # the raters' tokens
                 lambda: hosted.client("beta").study_report("final-b"),
                 lambda: hosted.client("beta").close_study("final-b")):
        assert refused(call).code() == Code.PERMISSION_DENIED
    error = refused(lambda: web.next_study_task("not-a-rater-token"))
    assert error.code() == Code.NOT_FOUND and "unknown rater token" in error.details()
    status, body = http(f"{hosted.base}/api/rate/not-a-rater-token/task")
    assert status == 404 and "unknown rater token" in body["error"]
    # a task shown to rater 1, answered with rater 0's token
    first, second = study.raters[0].token, study.raters[1].token
    theirs = web.next_study_task(second).task_id
    error = refused(lambda: web.rate_study_task(first, theirs, 3))
    assert error.code() == Code.NOT_FOUND and "not given to this rater" in error.details()
    status, body = http(f"{hosted.base}/api/rate/{first}/answer", {"task_id": theirs, "level": 3})
    assert status == 404 and "not given to this rater" in body["error"]
    status, body = http(f"{hosted.base}/api/rate/{second}/answer", {"task_id": theirs,
                                                                    "level": 7})
    assert status == 400 and "level from 1 to 4" in body["error"]
    status, body = http(f"{hosted.base}/api/rate/{second}/answer", {"level": 2})
    assert status == 400 and "task_id" in body["error"]
    assert stored_ratings(hosted.store) == {}  # nothing was recorded by any of these


def stored_ratings(store: Path) -> dict[tuple[int, str], int]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT rater, task_id, level FROM study_ratings").fetchall()
    return {(rater, task): level for rater, task, level in rows}


def task_of(store: Path, task_id: str) -> tuple[int, str, int, int]:
    with sqlite3.connect(store) as db:
        row = db.execute("SELECT rater, kind, method, image FROM study_tasks WHERE task_id = ?",
                         (task_id,)).fetchone()
    return int(row[0]), str(row[1]), int(row[2]), int(row[3])


def careful_level(store: Path, task_id: str) -> int:
    """What an attentive rater answers: the input as its own result is excellent, a degraded
    one probably worse; a method's result by its quality (alpha best, the identity baseline
    worst), varying a little by rater and image, the same each time the pair comes back."""
    rater, kind, method, image = task_of(store, task_id)
    if kind == "identical":
        return 4
    if kind == "degraded":
        return 1
    return max(1, min(4, (3, 2, 1)[method] + (rater + image) % 3 - 1))


def browser(width: int, height: int, profile: Path, phone: bool = False) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    if phone:  # a desktop window cannot be made this narrow: emulate the phone's screen
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": {
            "width": width, "height": height, "pixelRatio": 2.0, "touch": True}})
    return webdriver.Chrome(options=options,
                            service=Service(shutil.which("chromedriver") or "chromedriver"))


def state_of(driver: Any) -> tuple[str, str]:
    main = driver.find_element("id", "study")
    return main.get_attribute("data-state") or "", main.get_attribute("data-task") or ""


def wait_until(driver: Any, what: str, condition: Any, timeout_s: float = 60.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(
        lambda d: condition(*state_of(d)), message=what)


def play(driver: Any, hosted: Hosted, token: str, worker: str, careless: bool,
         reload_at: int = -1, double_click_at: int = -1, screenshot: Path | None = None
         ) -> tuple[dict[str, int], str]:
    """A rater's whole session through the page: the task ids and levels answered, and the
    completion code shown at the end."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.get(f"{hosted.base}/rate/{token}?workerId={worker}&assignmentId=A-{worker}")
    given: dict[str, int] = {}
    step = 0
    while True:
        wait_until(driver, "a task or the thank-you page",
                   lambda state, task: state in ("ready", "finished", "problem"))
        state, task = state_of(driver)
        assert state != "problem", driver.find_element(By.ID, "problem-text").text
        if state == "finished":
            return given, driver.find_element(By.ID, "code").text
        if step == reload_at:  # a reload shows the same unanswered task again
            driver.refresh()
            wait_until(driver, "the task after a reload", lambda s, t: s == "ready")
            assert state_of(driver)[1] == task
        if step == 0 and screenshot is not None:
            check_zoom(driver)
            height = driver.execute_script("return window.innerHeight")
            for button in driver.find_elements(By.CSS_SELECTOR, "#levels button"):
                assert button.rect["y"] + button.rect["height"] <= height  # no scrolling
            driver.save_screenshot(str(screenshot))
        level = 1 if careless else careful_level(hosted.store, task)
        if not careless:
            time.sleep(CAREFUL_WAIT_S)
        button = driver.find_element(By.CSS_SELECTOR, f'#levels button[data-level="{level}"]')
        if step == double_click_at:
            ActionChains(driver).double_click(button).perform()
        elif step % 2:
            driver.find_element(By.TAG_NAME, "body").send_keys(str(level))
        else:
            button.click()
        given[task] = level
        wait_until(driver, "the next task", lambda s, t, task=task: s == "finished" or (
            s in ("ready", "loading") and t != task))
        step += 1


def check_zoom(driver: Any) -> None:
    """Zooming in moves both images alike (one zoom for both), and Fit undoes it."""
    from selenium.webdriver.common.by import By

    def transforms() -> list[str]:
        return [img.get_attribute("style") or "" for img in
                driver.find_elements(By.CSS_SELECTOR, ".frame img")]

    driver.find_element(By.ID, "zoom-in").click()
    driver.find_element(By.ID, "zoom-in").click()
    zoomed = transforms()
    assert len(zoomed) == 2 and zoomed[0] == zoomed[1] and "scale(2.25)" in zoomed[0]
    assert driver.find_element(By.ID, "zoom-level").text == "225%"
    driver.find_element(By.ID, "zoom-reset").click()
    assert all("scale(1)" in t for t in transforms())


def check_phone_layout(hosted: Hosted, token: str, profile: Path, screenshot: Path) -> None:
    """On a phone-sized window: no sideways scrolling, the two images side by side, the four
    levels on screen."""
    from selenium.webdriver.common.by import By

    phone = browser(390, 844, profile, phone=True)
    try:
        phone.get(f"{hosted.base}/rate/{token}")
        wait_until(phone, "the first task", lambda s, t: s == "ready")
        assert phone.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
        left, right = (phone.find_element(By.ID, side).rect for side in ("left", "right"))
        assert left["x"] + left["width"] <= right["x"] and left["y"] == right["y"]
        assert phone.execute_script("return window.innerWidth") == 390
        height = phone.execute_script("return window.innerHeight")
        for button in phone.find_elements(By.CSS_SELECTOR, "#levels button"):
            assert button.is_displayed() and button.rect["y"] + button.rect["height"] <= height
        phone.save_screenshot(str(screenshot))
    finally:
        phone.quit()


def plain_mos(ratings: list[tuple[int, int, int, int]], excluded: set[int]) -> dict[int, float]:
    """The paper's procedure, written out: per (method, image) the mean of the included
    raters' levels, then per method the mean over its images."""
    per_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
    for rater, method, image, level in ratings:
        if rater not in excluded:
            per_pair[(method, image)].append(level)
    per_method: dict[int, list[float]] = defaultdict(list)
    for (method, _), levels in per_pair.items():
        per_method[method].append(sum(levels) / len(levels))
    return {method: sum(means) / len(means) for method, means in per_method.items()}


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                    reason="chromium and chromedriver are not installed (make chromium "
                           "installs Debian's chromium and chromium-driver)")
def test_raters_in_a_real_browser_make_the_final_leaderboard(
        hosted: Hosted, study: scorer_pb2.Study, tmp_path: Path) -> None:
    jury = hosted.client("jury")
    before = jury.leaderboard(Track.B, by="b", phase=Phase.FINAL, phase_name="test")
    assert list(before.entries) == []  # every finalist waits for its MOS
    tokens = [r.token for r in study.raters]
    careless = 3
    given: dict[tuple[int, str], int] = {}
    codes = {}
    # PIRM_STUDY_SCREENSHOTS=docs keeps the two screenshots the README shows
    shots = Path(os.environ.get("PIRM_STUDY_SCREENSHOTS") or tmp_path)
    check_phone_layout(hosted, tokens[2], tmp_path / "phone", shots / "study-phone.png")
    driver = browser(1280, 900, tmp_path / "profile")
    try:
        for rater, token in enumerate(tokens):
            driver.delete_all_cookies()
            answered, codes[rater] = play(driver, hosted, token, f"W{rater}",
                                          careless=rater == careless,
                                          reload_at=2 if rater == 0 else -1,
                                          double_click_at=1 if rater in (1, 3) else -1,
                                          screenshot=shots / "study-desktop.png"
                                          if rater == 0 else None)
            given.update({(rater, task): level for task, level in answered.items()})
        # a retried request (the network lost the answer's reply) records nothing new
        last_task = next(task for (rater, task) in given if rater == 0)
        status, body = http(f"{hosted.base}/api/rate/{tokens[0]}/answer",
                            {"task_id": last_task, "level": 5 - given[(0, last_task)]})
        assert status == 200 and body["recorded_now"] is False
        assert body["recorded_level"] == given[(0, last_task)] and body["finished"]
    finally:
        driver.quit()

    assert stored_ratings(hosted.store) == given  # exactly the answers given, once each
    assert codes == {r.rater: r.completion_code for r in study.raters}
    following = jury.study("final-b")
    raters = {r.rater: r for r in following.raters}
    assert {r for r, q in raters.items() if q.excluded} == {careless}
    assert any("control" in reason for reason in raters[careless].reasons)
    # the scorer's exclusions gauge (this test process hosts the scorer)
    assert REGISTRY.get_sample_value("pirm_study_raters_excluded", {"study": "final-b"}) == 1
    assert REGISTRY.get_sample_value("pirm_study_raters_measured", {"study": "final-b"}) == 4
    assert all(r.done == r.total for r in raters.values())
    assert [raters[r].worker_id for r in range(4)] == ["W0", "W1", "W2", "W3"]

    pair_ratings = []
    for (rater, task), level in given.items():
        _, kind, method, image = task_of(hosted.store, task)
        if kind == "pair":
            pair_ratings.append((rater, method, image, level))
    expected = plain_mos(pair_ratings, {careless})
    for found in following.methods:
        assert found.mos == pytest.approx(expected[found.method], abs=1e-12)
        assert found.mos_low <= found.mos <= found.mos_high
        assert found.ratings == sum(1 for r, m, _, _ in pair_ratings
                                    if m == found.method and r != careless)

    samples = scrape(hosted.web.port)
    assert total(samples, "pirm_study_ratings_total", recorded="new") == len(given)
    assert total(samples, "pirm_study_ratings_total", recorded="repeat") == 1
    assert total(samples, "pirm_study_active_raters") == 4

    cli = pirm("study", "status", "final-b", "--json", *hosted.cli_flags)
    shown = json.loads(cli.stdout)
    assert {m["team"]: m["mos"] for m in shown["methods"]} == pytest.approx(
        {m.team: expected[m.method] for m in study.methods})
    assert [r["excluded"] for r in shown["raters"]] == [False, False, False, True]

    closed = pirm("study", "close", "final-b", *hosted.cli_flags).stdout
    assert "closed: each finalist's job has its MOS" in closed
    assert jury.study("final-b").state == "CLOSED"
    board = jury.leaderboard(Track.B, by="b", phase=Phase.FINAL, phase_name="test")
    mos_of_job = {m.job_id: expected[m.method] for m in study.methods}
    assert {e.job_id: e.mos for e in board.entries} == pytest.approx(mos_of_job)
    scores = [e.scores.score_b for e in board.entries]
    assert scores == sorted(scores, reverse=True)
    # MOS_ref is SRCNN's MOS in this study (SPEC.md section 3), not the published 2.295.
    srcnn_mos = one(expected[m.method] for m in study.methods if m.team == "SRCNN")
    for entry in board.entries:  # the job itself carries its MOS, as SetMos would set it
        job = jury.get(entry.job_id)
        assert job.result.mos == pytest.approx(mos_of_job[entry.job_id])
        assert job.result.constants.mos_ref == pytest.approx(srcnn_mos)


def test_the_report_shows_mos_intervals_agreement_exclusions_and_examples(
        hosted: Hosted, study: scorer_pb2.Study, tmp_path: Path) -> None:
    out = tmp_path / "report"
    pirm("study", "report", "final-b", "--out", str(out), *hosted.cli_flags)
    page = (out / "report.html").read_text()
    current = hosted.client("jury").study("final-b")
    for method in current.methods:
        if method.HasField("mos"):
            assert f"{method.mos:.3f}" in page and f"{method.mos_low:.3f}" in page
    for section in ("MOS per method", "Rating distribution", "Rater agreement",
                    "Raters and exclusions", "Example pairs"):
        assert f"<h2>{section}</h2>" in page
    for rater in current.raters:
        for reason in rater.reasons:
            assert reason in page
    examples = sorted(p.name for p in out.glob("example-*.png"))
    assert examples == sorted([f"example-{i}-input.png" for i in range(3)]
                              + [f"example-{i}-method-{m}.png" for i in range(3)
                                 for m in range(3)])


def test_after_closing_a_finished_rater_reads_the_code_and_rates_no_more(
        hosted: Hosted, study: scorer_pb2.Study) -> None:
    if hosted.client("jury").study("final-b").state != "CLOSED":
        pytest.skip("the browser test closes the study")
    web = hosted.client("web")
    finished = web.next_study_task(study.raters[0].token)
    assert finished.finished and finished.completion_code == study.raters[0].completion_code
    error = refused(lambda: web.rate_study_task(study.raters[0].token, "0" * 16, 2))
    assert error.code() == Code.FAILED_PRECONDITION and "closed" in error.details()
    status, body = http(f"{hosted.base}/api/rate/{study.raters[0].token}/answer",
                        {"task_id": "0" * 16, "level": 2})
    assert status == 409 and "closed" in body["error"]
