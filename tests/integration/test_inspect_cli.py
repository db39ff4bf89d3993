"""`pirm inspect` as users run it (the console script, the model inspected and timed in a fresh
process): the SRCNN baseline's report and its LiteRT estimate. (The report of a refused model
is checked in tests/unit/test_inspection.py, without a process per case.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from services.scorer.samples import srcnn_graph_def
from tests.conftest import DATA

PIRM = str(Path(sys.executable).parent / "pirm")


def pirm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PIRM, *args], capture_output=True, text=True, timeout=180)


def srcnn_path(tmp_path: Path) -> Path:
    real = DATA / "models_pretrained" / "dped_srcnn.pb"
    if real.is_file():
        return real
    generated = tmp_path / "srcnn.pb"
    generated.write_bytes(srcnn_graph_def())
    return generated


def test_srcnn_report_with_mobile_estimate(tmp_path: Path) -> None:
    done = pirm("inspect", str(srcnn_path(tmp_path)), "--track", "B", "--size", "64x48",
                "--mobile", "--threads", "1", "--runs", "5", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    pixels = 64 * 48
    assert report["accepted"] and report["refused_ops"] == []
    assert report["input"]["shape"] == report["output"]["shape"] == [1, 48, 64, 3]
    assert report["ops"]["Conv2D"] == 3
    assert report["flops_by_op"]["Conv2D"] == 2 * pixels * (
        9 * 9 * 3 * 64 + 5 * 5 * 64 * 32 + 5 * 5 * 32 * 3)
    mobile = report["mobile"]
    assert mobile["converted"] and mobile["threads"] == 1
    for runtime in ("litert", "tensorflow"):
        assert mobile[runtime]["runs"] >= 5
        assert mobile[runtime]["min_ms"] <= mobile[runtime]["median_ms"] <= mobile[runtime][
            "max_ms"]
    assert mobile["max_abs_difference"] < 1e-4
    assert done.stderr == ""  # TensorFlow's and LiteRT's native logs stay in the child
