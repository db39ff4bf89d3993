"""The tests find the challenge data where the services do ($PIRM_DATA), and under
PIRM_REQUIRE_DATA=1 (as CI runs them) a real-data test without its data fails rather than
skipping: pytest run in child processes with PIRM_DATA pointing to an empty folder."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from services.scorer.samples import challenge_data_dir
from tests.conftest import DATA, REPO

# Three ways a test meets missing data: the session fixture `pirm_data`, a module fixture
# (require_data), and require_data in the test itself.
PROBES = [
    "tests/integration/test_metrics_service.py::test_hd_pair_track_a_protocol",
    "tests/unit/test_quality.py::test_div2k_hd_tf_flavour_matches_reference",
    "tests/unit/test_quality_options.py::test_y_channel_dped_patch_numpy_flavour",
]


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """test name -> (outcome, message) from pytest's JUnit XML."""
    found = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        marks = [child for child in case if child.tag in ("failure", "error", "skipped")]
        outcome = marks[0].tag if marks else "passed"
        found[case.attrib["name"]] = (outcome, marks[0].attrib.get("message", "") if marks else "")
    return found


def run_probes(empty: Path, report: Path, require: bool) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if key != "PIRM_REQUIRE_DATA"}
    env["PIRM_DATA"] = str(empty)
    if require:
        env["PIRM_REQUIRE_DATA"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-m", "", f"--junitxml={report}", *PROBES],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_the_tests_look_for_the_data_where_the_services_do() -> None:
    if "PIRM_DATA" in os.environ:
        assert Path(os.environ["PIRM_DATA"]) == DATA
    else:
        assert REPO.parent / "shared" / "pirm2018" == DATA
    assert challenge_data_dir() == (DATA if DATA.is_dir() else None)


def test_missing_data_fails_under_pirm_require_data_and_skips_otherwise(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # Both runs at once: each child spends its time importing.
    runs = {require: run_probes(empty, tmp_path / f"require-{require}.xml", require)
            for require in (True, False)}
    for run in runs.values():
        run.wait(timeout=300)
    for require in (True, False):
        found = outcomes(tmp_path / f"require-{require}.xml")
        assert sorted(found) == sorted(probe.split("::")[1] for probe in PROBES), found
        for name, (outcome, message) in found.items():
            # A fixture's failure is reported as an error of the test, a test's as a failure.
            assert outcome == ("skipped" if not require else
                               "error" if name != "test_y_channel_dped_patch_numpy_flavour"
                               else "failure"), (name, outcome, message)
            assert f"Looked in $PIRM_DATA={empty}" in message, message
            assert "Point PIRM_DATA at" in message, message
            assert ("PIRM_REQUIRE_DATA=1" in message) == require, message
