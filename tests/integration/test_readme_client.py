"""The README's Python client example, run as it is written (the code block after "### Python
client") against the test cluster, so that the documentation cannot drift from the library."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.scorer.samples import make_sample_dataset
from services.scorer.scoring import Track
from tests.cluster import Cluster
from tests.conftest import REPO
from tests.integration.conftest import brighten
from tests.integration.helpers import graph_bytes
from tests.reference import psnr_ref


def readme_example() -> str:
    section = (REPO / "README.md").read_text().split("### Python client", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md has no Python block under '### Python client'"
    return match.group(1)


def test_readme_client_example(cluster: Cluster, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    # The files the example names, in the folder it runs from; the scorer as its comment says.
    make_sample_dataset(tmp_path / "pirm2018", Track.B, patches_per_photo=1)
    (tmp_path / "my_model.pb").write_bytes(graph_bytes(brighten))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIRM_SCORER_TARGET", cluster.target(cluster.scorer))
    exec(compile(readme_example(), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    psnr, msssim, runtime = re.fullmatch(
        r"PSNR ([\d.]+) dB, MS-SSIM ([\d.]+), ([\d.]+) ms", lines[0]).groups()  # type: ignore[union-attr]
    # The job's PSNR is the mean of the per-image PSNRs of 0.9 x + 0.08, computed here.
    from services.scorer.protocol import prepare_quality_pair, quality_items

    values = []
    for item in quality_items(Track.B, tmp_path / "pirm2018" / "dped"):
        model_input, target = prepare_quality_pair(Track.B, item)
        output = model_input[0] * 0.9 + 0.08
        values.append(psnr_ref(output.clip(0, 1), target / 255.0))
    assert abs(float(psnr) - sum(values) / len(values)) < 1e-3
    assert 0 < float(msssim) <= 1 and float(runtime) > 0
    assert re.fullmatch(r"scores A -?[\d.]+, B -?[\d.]+, C -?[\d.]+", lines[1])
    assert re.fullmatch(r"worst image \d+\.jpg: [\d.]+ dB", lines[2])
    assert f"{min(values):.2f} dB" in lines[2]
