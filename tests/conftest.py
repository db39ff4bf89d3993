"""Shared test fixtures: where the challenge data is, and helpers to skip without it; every
test leaves the test process's limits as it found them."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import (  # noqa: F401 - session fixtures for every test folder
    cluster,
    inference_stub,
    metrics_stub,
    scorer_stub,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "pirm2018"


@pytest.fixture(autouse=True)
def process_limits_kept() -> Iterator[None]:
    """A test leaves the limits of the test process as it found them: a test file's process
    runs other files' tests after it (xdist), whose TensorFlow a lowered cap would abort."""
    before = resource.getrlimit(resource.RLIMIT_DATA)
    yield
    assert resource.getrlimit(resource.RLIMIT_DATA) == before, "the test lowered RLIMIT_DATA"


@pytest.fixture(scope="session")
def pirm_data() -> Path:
    """The challenge's sample data beside the repository; tests that need it skip without it."""
    if not (SHARED / "models_pretrained" / "dped_srcnn.pb").is_file():
        pytest.skip(f"challenge data not found at {SHARED} (the real-data checks need it)")
    return SHARED
