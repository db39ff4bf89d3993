"""Shared test fixtures: where the challenge data is, and helpers to skip without it."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def pirm_data() -> Path:
    """The challenge's sample data beside the repository; tests that need it skip without it."""
    if not (SHARED / "models_pretrained" / "dped_srcnn.pb").is_file():
        pytest.skip(f"challenge data not found at {SHARED} (the real-data checks need it)")
    return SHARED
