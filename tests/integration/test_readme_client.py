"""The README's Python client example (the code block after "### Python client"), run as it is
written against the test cluster by the `finished_job` fixture, so that the documentation
cannot drift from the library: here, what it printed against an independent computation."""

from __future__ import annotations

import re

from services.core.track import Track
from services.scorer.protocol import prepare_quality_pair, quality_items
from tests.integration.conftest import FinishedJob
from tests.reference import psnr_ref


def test_readme_client_example(finished_job: FinishedJob) -> None:
    lines = finished_job.printed
    assert finished_job.team == "my-team" and len(lines) == 3, lines
    figures = re.fullmatch(r"PSNR ([\d.]+) dB, MS-SSIM ([\d.]+), ([\d.]+) ms", lines[0])
    assert figures, lines[0]
    psnr, msssim, runtime = (float(v) for v in figures.groups())
    # The job's PSNR is the mean of the per-image PSNRs of 0.9 x + 0.08, computed here.
    values = []
    for item in quality_items(Track.B, finished_job.dataset):
        model_input, target = prepare_quality_pair(Track.B, item)
        values.append(psnr_ref((model_input[0] * 0.9 + 0.08).clip(0, 1), target / 255.0))
    assert abs(psnr - sum(values) / len(values)) < 1e-3
    assert 0 < msssim <= 1 and runtime > 0
    assert re.fullmatch(r"scores A -?[\d.]+, B -?[\d.]+, C -?[\d.]+", lines[1])
    assert re.fullmatch(r"worst image \d+\.jpg: [\d.]+ dB", lines[2])
    assert lines[2].endswith(f"{min(values):.2f} dB")
