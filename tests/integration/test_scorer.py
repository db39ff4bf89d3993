"""Jobs through the whole cluster, compared with the challenge's protocol computed directly."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from pirm.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

from services.core.track import Track
from services.scorer.samples import srcnn_graph_def
from tests.cluster import sample_dataset
from tests.integration.conftest import Cluster
from tests.integration.helpers import graph_bytes, is_serving, wait_job
from tests.official import ImageFigures, track_a_figures, track_b_figures

Stub = scorer_pb2_grpc.ScorerServiceStub
PIRM = str(Path(sys.executable).parent / "pirm")

# SPEC.md section 3, transcribed: (PSNR_base, SSIM_base, {score: (alpha, beta, gamma)}).
CONSTANTS = {
    "A": (26.5, 0.94, {"a": (4, 100, 1), "b": (1, 400, 1), "c": (2, 200, 1.5)}),
    "B": (21.0, 0.90, {"a": (4, 100, 2), "b": (1, 400, 2), "c": (2, 200, 2.9)}),
}


def expected_score(track: str, which: str, psnr: float, msssim: float, t: float,
                   t_base: float) -> float:
    psnr_base, ssim_base, weights = CONSTANTS[track]
    alpha, beta, gamma = weights[which]
    return alpha * (psnr - psnr_base) + beta * (msssim - ssim_base) + gamma * min(4, t_base / t)


def per_image(store: Path, job_id: str) -> dict[str, tuple[float, float]]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT image, psnr, msssim FROM image_results WHERE job_id = ?",
                          (job_id,)).fetchall()
    return {image: (p, m) for image, p, m in rows}


def assert_matches_official(store: Path, job_id: str, official: list[ImageFigures]) -> None:
    stored = per_image(store, job_id)
    assert sorted(stored) == sorted(f.name for f in official)
    for figure in official:
        psnr, msssim = stored[figure.name]
        assert abs(psnr - figure.psnr) < 1e-4, figure.name
        assert abs(msssim - figure.msssim) < 1e-6, figure.name


def submit(stub: Stub, track: int, model: bytes, dataset: Path, **kw: object) -> scorer_pb2.Job:
    return stub.SubmitJob(scorer_pb2.SubmitJobRequest(
        track=track, graph_def=model, dataset=str(dataset), **kw), timeout=60)


def test_track_b_cli_submit_matches_official_protocol(pirm_data: Path, cluster: Cluster) -> None:
    """`pirm submit --track B ... --wait --json` equals the official protocol computed here."""
    model = pirm_data / "models_pretrained" / "dped_srcnn.pb"
    dataset = pirm_data / "dped"
    completed = subprocess.run(
        [PIRM, "submit", "--track", "B", "--model", str(model), "--data", str(dataset),
         "--wait", "--json", "--team", "cli", "--scorer", cluster.target(cluster.scorer)],
        capture_output=True, text=True, timeout=900, check=True,
    )
    summary = json.loads(completed.stdout)
    assert summary["state"] == "SUCCEEDED", summary
    names = sorted((dataset / "patches" / "iphone").iterdir(), key=lambda p: int(p.stem))
    official = track_b_figures(model, [p.name for p in names], dataset / "patches")
    assert summary["images"] == len(official) == 350
    assert abs(summary["psnr"] - math.fsum(f.psnr for f in official) / len(official)) < 1e-4
    assert abs(summary["msssim"] - math.fsum(f.msssim for f in official) / len(official)) < 1e-6
    assert_matches_official(cluster.store, summary["job_id"], official)
    for which in "abc":
        assert summary[f"score_{which}"] == pytest.approx(expected_score(
            "B", which, summary["psnr"], summary["msssim"], summary["runtime_ms"],
            summary["baseline_runtime_ms"]), abs=1e-9)
    low, high = summary["runtime_ci95_ms"]
    assert 0 < low <= summary["runtime_ms"] <= high

    status = subprocess.run([PIRM, "status", summary["job_id"], "--json", "--scorer",
                             cluster.target(cluster.scorer)],
                            capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(status.stdout) == summary
    board = subprocess.run([PIRM, "leaderboard", "--track", "B", "--by", "c", "--scorer",
                            cluster.target(cluster.scorer)],
                           capture_output=True, text=True, timeout=60, check=True)
    assert "cli" in board.stdout and "score C" in board.stdout


def test_track_a_matches_official_protocol(
    pirm_data: Path, cluster: Cluster, scorer_stub: Stub, tmp_path: Path
) -> None:
    # Two full-size DIV2K images (one of them 2040x1284) keep the test short.
    for folder, names in (("original", ["0.png", "1.png"]), ("HD_res", ["0.png"])):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).symlink_to(pirm_data / "div2k" / folder / name)
    model = pirm_data / "models_pretrained" / "div2k_srcnn.pb"
    job = wait_job(scorer_stub, submit(scorer_stub, common_pb2.TRACK_A, model.read_bytes(),
                                       tmp_path, team="a-team").job_id)
    assert job.state == scorer_pb2.JOB_STATE_SUCCEEDED, job.error
    official = track_a_figures(model, sorted((tmp_path / "original").iterdir()))
    assert_matches_official(cluster.store, job.job_id, official)
    assert abs(job.result.psnr - math.fsum(f.psnr for f in official) / 2) < 1e-4
    assert abs(job.result.msssim - math.fsum(f.msssim for f in official) / 2) < 1e-6
    assert list(job.result.runtime.input_shape) == [1, 720, 1280, 3]
    assert job.result.constants.psnr_base == 26.5 and job.result.constants.ssim_base == 0.94


@pytest.mark.parametrize("track", [Track.A, Track.B])
def test_generated_sample_data_and_srcnn_shaped_model(
    cluster: Cluster, scorer_stub: Stub, tmp_path_factory: pytest.TempPathFactory, track: Track
) -> None:
    """What `make run` does on a machine without the challenge data."""
    root = tmp_path_factory.mktemp("samples")
    dataset = sample_dataset(root, track, patches_per_photo=3)
    model_path = root / "srcnn_shaped.pb"
    model_path.write_bytes(srcnn_graph_def())
    # Track B is scored as in the final phase (with a MOS), track A as in validation.
    message = common_pb2.TRACK_A if track is Track.A else common_pb2.TRACK_B
    phase = {"phase": common_pb2.PHASE_FINAL, "mos": 3.0} if track is Track.B else {}
    job = wait_job(scorer_stub, submit(scorer_stub, message, model_path.read_bytes(), dataset,
                                       team=f"sample-{track.value}", **phase).job_id)
    assert job.state == scorer_pb2.JOB_STATE_SUCCEEDED, job.error
    if track is Track.A:
        official = track_a_figures(model_path, sorted((dataset / "original").iterdir()))
    else:
        names = sorted((p.name for p in (dataset / "patches" / "iphone").iterdir()),
                       key=lambda n: int(n.split(".")[0]))
        official = track_b_figures(model_path, names, dataset / "patches")
    assert_matches_official(cluster.store, job.job_id, official)
    # Final phase: P - SSIM_base = kappa * (MOS - MOS_ref).
    if track is Track.B:
        assert job.result.mos == 3.0 and job.result.constants.mos_ref == 2.295
        speed = min(4, job.result.baseline_runtime.median_ms / job.result.runtime.median_ms)
        expected = 4 * (job.result.psnr - 21.0) + 100 * 0.0719 * (3.0 - 2.295) + 2 * speed
        assert job.result.scores.score_a == pytest.approx(expected, abs=1e-9)


def test_bad_submissions_get_clear_statuses(
    cluster: Cluster, scorer_stub: Stub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    dataset = sample_dataset(tmp_path_factory.mktemp("samples"), Track.B,
                                  patches_per_photo=1)
    model = srcnn_graph_def()

    def refused(code: grpc.StatusCode, text: str, **request: object) -> None:
        with pytest.raises(grpc.RpcError) as error:
            scorer_stub.SubmitJob(scorer_pb2.SubmitJobRequest(**request), timeout=60)
        assert error.value.code() == code
        assert text in error.value.details()

    ok = {"track": common_pb2.TRACK_B, "graph_def": model, "dataset": str(dataset)}
    refused(grpc.StatusCode.INVALID_ARGUMENT, "GraphDef", **{**ok, "graph_def": b"\x01" * 64})
    no_input = graph_bytes(lambda tf, x: None)  # has "input" but no "output" node
    refused(grpc.StatusCode.INVALID_ARGUMENT, "'output:0'", **{**ok, "graph_def": no_input})
    refused(grpc.StatusCode.INVALID_ARGUMENT, "track A", **{**ok, "track": 0})
    refused(grpc.StatusCode.INVALID_ARGUMENT, "MOS",
            **{**ok, "phase": common_pb2.PHASE_FINAL, "mos": float("nan")})
    # Track A's baseline MOS was not published: its final phase needs one configured.
    samples_a = sample_dataset(dataset.parent, Track.A)
    refused(grpc.StatusCode.INVALID_ARGUMENT, "--mos-ref-a", **{
        **ok, "track": common_pb2.TRACK_A, "dataset": str(samples_a),
        "phase": common_pb2.PHASE_FINAL, "mos": 3.0})
    refused(grpc.StatusCode.INVALID_ARGUMENT, "does not exist",
            **{**ok, "dataset": str(dataset / "nowhere")})
    (dataset / "patches" / "canon" / "0.jpg").unlink()
    refused(grpc.StatusCode.INVALID_ARGUMENT, "unpaired patches", **ok)
    with pytest.raises(grpc.RpcError) as error:
        scorer_stub.GetJob(scorer_pb2.GetJobRequest(job_id="no-such-job"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert is_serving(cluster.channel(cluster.scorer))


def test_model_with_wrong_output_shape_fails_its_job(
    cluster: Cluster, scorer_stub: Stub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    dataset = sample_dataset(tmp_path_factory.mktemp("samples"), Track.B,
                                  patches_per_photo=1)
    half = graph_bytes(lambda tf, x: tf.identity(x[:, ::2, ::2, :], name="output"))
    job = wait_job(scorer_stub, submit(scorer_stub, common_pb2.TRACK_B, half, dataset).job_id)
    assert job.state == scorer_pb2.JOB_STATE_FAILED
    assert "returned shape" in job.error and "(1, 50, 50, 3)" in job.error


def test_request_id_makes_submission_idempotent(
    cluster: Cluster, scorer_stub: Stub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    dataset = sample_dataset(tmp_path_factory.mktemp("samples"), Track.B,
                                  patches_per_photo=1)
    first = submit(scorer_stub, common_pb2.TRACK_B, srcnn_graph_def(), dataset,
                   team="idem", request_id="r-1")
    second = submit(scorer_stub, common_pb2.TRACK_B, srcnn_graph_def(), dataset,
                    team="idem", request_id="r-1")
    assert first.job_id == second.job_id
    jobs = scorer_stub.ListJobs(scorer_pb2.ListJobsRequest(team="idem")).jobs
    assert [j.job_id for j in jobs] == [first.job_id]
    wait_job(scorer_stub, first.job_id)
