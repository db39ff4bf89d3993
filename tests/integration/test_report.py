"""`pirm report` against real servers: the HTML it writes is rendered by headless Chromium,
whose screenshot must show something and whose DOM must hold the leaderboard; the new
per-image RPCs return what an independent computation gives."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.cli.main import main
from services.client import ScorerClient
from services.core.track import Track
from services.scorer.protocol import prepare_quality_pair, quality_items
from tests.cluster import Cluster
from tests.integration.conftest import FinishedJob
from tests.reference import msssim_numpy_ref, psnr_ref

PIRM = str(Path(sys.executable).parent / "pirm")


def pirm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PIRM, *args], capture_output=True, text=True, timeout=120,
                          check=True)


def test_job_images_and_crops_match_an_independent_computation(
        cluster: Cluster, finished_job: FinishedJob) -> None:
    job_id = finished_job.job_id
    items = quality_items(Track.B, finished_job.dataset)
    with ScorerClient(cluster.target(cluster.scorer)) as client:
        images = client.job_images(job_id)
        crops = client.image_crops(job_id, [items[3].name], size=64)
    assert [i.image for i in images] == [item.name for item in items]  # the dataset's order
    for image, item in zip(images, items, strict=True):
        model_input, target = prepare_quality_pair(Track.B, item)
        output = model_input[0] * np.float32(0.9) + np.float32(0.08)
        truth = target.astype(np.float32) / np.float32(255)
        assert abs(image.psnr - psnr_ref(np.clip(output, 0, 1), truth)) < 1e-4
        expected = msssim_numpy_ref(output.astype(np.float64) * 255, truth.astype(np.float64) * 255)
        assert abs(image.msssim - expected) < 1e-6
    model_input, target = prepare_quality_pair(Track.B, items[3])
    window = (slice(18, 82), slice(18, 82))  # 64 px at the centre of a 100 px patch
    crop = crops[0]
    assert crop.image == items[3].name
    assert np.array_equal(_decode(crop.target_png), target[window])
    expected_input = np.round(model_input[0][window] * 255).astype(np.uint8)
    assert np.array_equal(_decode(crop.input_png), expected_input)
    expected_output = np.round(np.clip(model_input[0][window] * 0.9 + 0.08, 0, 1) * 255)
    assert np.abs(_decode(crop.output_png).astype(int) - expected_output).max() <= 1


def test_report_renders_in_chromium(cluster: Cluster, finished_job: FinishedJob,
                                    tmp_path: Path) -> None:
    job_id = finished_job.job_id
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (make chromium installs Debian's package)")
    out = tmp_path / "report"
    written = json.loads(pirm("report", job_id, "--out", str(out), "--json",
                              "--scorer", cluster.target(cluster.scorer)).stdout)
    html = Path(written["html"])
    assert html == out / "report.html" and written["job_id"] == job_id
    assert {Path(f).name for f in written["figures"]} >= {"runtime.png", "images.png",
                                                         "crop-best-output.png"}
    assert "http://" not in html.read_text() and "https://" not in html.read_text()
    shot = tmp_path / "shot.png"
    # One browser run: the DOM on stdout, the screenshot to a file.
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1200,1600", f"--screenshot={shot}", "--dump-dom", f"file://{html}"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [row for row in dom.split("<tr")[1:] if finished_job.team in row]  # table rows
    with ScorerClient(cluster.target(cluster.scorer)) as client:
        psnr = client.status(job_id).result.psnr
    assert rows and finished_job.model.name in rows[0] and f"{psnr:.3f}" in rows[0]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # not a blank page


def test_track_report(cluster: Cluster, finished_job: FinishedJob, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:  # in-process, as the console script runs it
        main(["report", "--track", "B", "--out", str(tmp_path), "--json",
              "--scorer", cluster.target(cluster.scorer)])
    assert exit_.value.code == 0
    written = json.loads(capsys.readouterr().out)
    assert written["job_id"] is None and written["entries"] >= 1 and len(written["crops"]) == 2
    html = Path(written["html"]).read_text()
    assert finished_job.team in html and "Track B leaderboard" in html
    for figure in written["figures"]:
        assert Image.open(figure).size[0] > 0


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
