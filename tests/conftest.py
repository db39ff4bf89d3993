"""Shared test fixtures: where the challenge data is (found as the product finds it), and
helpers to skip without it, or fail under PIRM_REQUIRE_DATA=1 (CI); every test leaves the test
process's limits as it found them."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from services.scorer.samples import challenge_data_candidate
from tests.cluster import (  # noqa: F401 - session fixtures for every test folder
    cluster,
    inference_stub,
    metrics_stub,
    scorer_stub,
)

REPO = Path(__file__).resolve().parents[1]
# $PIRM_DATA, else ../shared/pirm2018 beside the repository: where the services look.
DATA = challenge_data_candidate()
# CI sets it: a real-data test without its data is then a failure, not a quiet skip.
REQUIRE_DATA = os.environ.get("PIRM_REQUIRE_DATA", "") not in ("", "0")


def missing_data(path: Path) -> NoReturn:
    """Skips the calling test for want of `path`, or fails it under PIRM_REQUIRE_DATA=1, saying
    where the data was looked for and how to point the tests at it."""
    where = (f"$PIRM_DATA={os.environ['PIRM_DATA']}" if os.environ.get("PIRM_DATA")
             else f"{DATA} (../shared/pirm2018 beside the repository; $PIRM_DATA is unset)")
    message = (f"challenge data not found: {path} is missing. Looked in {where}. Point "
               "PIRM_DATA at the folder holding div2k/, dped/ and models_pretrained/.")
    if REQUIRE_DATA:
        pytest.fail(f"{message} PIRM_REQUIRE_DATA=1: the real-data tests must run here.",
                    pytrace=False)
    pytest.skip(message)


def require_data(*parts: str) -> Path:
    """DATA/parts, which the test needs: missing, it skips the test (or fails it, see
    missing_data)."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        missing_data(path)
    return path


@pytest.fixture(autouse=True)
def process_limits_kept() -> Iterator[None]:
    """A test leaves the limits of the test process as it found them: a test file's process
    runs other files' tests after it (xdist), whose TensorFlow a lowered cap would abort."""
    before = resource.getrlimit(resource.RLIMIT_DATA)
    yield
    assert resource.getrlimit(resource.RLIMIT_DATA) == before, "the test lowered RLIMIT_DATA"


@pytest.fixture(scope="session")
def pirm_data() -> Path:
    """The challenge's sample data; tests that need it skip without it (fail in CI)."""
    require_data("models_pretrained", "dped_srcnn.pb")
    return DATA


@pytest.fixture(scope="session")
def metric_kernels() -> None:
    """The numba metric kernels loaded once per test process, before the first metric test
    (`make setup` compiled them into numba's cache), so no single test's time includes it."""
    from services.metrics.quality import warm_up

    warm_up()
