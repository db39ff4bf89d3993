"""The plain progress lines (no terminal: pipes, logs, `make run` in CI): a job that stays in a
stage for long is said to be still at it, with what the stage does, until it is final."""

from __future__ import annotations

import time
from typing import Any

import pytest

from services.cli.progress import STAGE_WORK, JobBars


def summary(state: str, stage: str, done: int = 4) -> dict[str, Any]:
    return {"job_id": "0c26b705cb82", "state": state, "stage": stage, "team": "t",
            "model_name": "m", "images_done": done, "images_total": 4}


def test_a_job_long_in_its_stage_is_said_to_be_still_at_it_until_it_is_final(
        capsys: pytest.CaptureFixture[str]) -> None:
    said = ""
    with JobBars(live=False, still_every_s=0.2) as bars:
        bars.update(summary("RUNNING", "quality", 0))
        bars.update(summary("RUNNING", "quality", 1))  # images alone: no line of their own
        bars.update(summary("RUNNING", "timing"))
        deadline = time.monotonic() + 30
        while "still after" not in said:  # the bars' thread says it
            assert time.monotonic() < deadline, "no line for a job still in its stage"
            time.sleep(0.05)
            said += capsys.readouterr().err
        bars.update(summary("SUCCEEDED", ""))
        time.sleep(0.6)  # three periods: a final job is never said to be still running
    lines = (said + capsys.readouterr().err).splitlines()
    assert lines[:2] == ["job 0c26b705cb82: RUNNING quality (0/4 images)",
                         "job 0c26b705cb82: RUNNING timing (4/4 images)"], lines
    assert lines[-1] == "job 0c26b705cb82: SUCCEEDED (4/4 images)", lines
    still = lines[2:-1]
    assert still and all(line.startswith("job 0c26b705cb82: RUNNING timing (4/4 images), "
                                         "still after ") and line.endswith(STAGE_WORK["timing"])
                         for line in still), lines
