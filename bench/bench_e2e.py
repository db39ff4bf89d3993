"""make bench-e2e: track A validation of the SRCNN baseline through the cluster, and the
challenge's own in-process loop, in the same run (issue 5).

The cluster: `pirm up`'s three processes on free ports; one job submitted and waited for.
Its result says where the time went (busy seconds per pipeline stage, wall seconds of the
quality and timing stages).

The challenge-style loop, in this process, as the official script does it: per image, decode,
bicubic x1/4 (PIL), one TensorFlow session run, then tf.image.psnr and tf.image.ssim_multiscale
(eager); then the runtime: the model run on 4 HD inputs, the first two discarded (SPEC
section 2).

Data: ../shared/pirm2018 (or $PIRM_DATA): div2k (original/ for quality, HD_res/ for timing) and
models_pretrained/div2k_srcnn.pb. Without it, the generated sample dataset and SRCNN-shaped
graph that `make run` uses.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from inference import open_inference_pb2 as oip
from inference import open_inference_pb2_grpc as oip_grpc
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from services.client import ScorerClient  # noqa: E402
from services.common.auth import Role  # noqa: E402
from services.common.cluster import LocalCluster, free_port  # noqa: E402
from services.core.channel import (
    ChannelSecurity,  # noqa: E402
    open_channel,  # noqa: E402
)
from services.core.track import Track  # noqa: E402
from services.scorer.jobs import inference_model_name  # noqa: E402
from services.scorer.samples import (  # noqa: E402
    REPO_ROOT,
    challenge_data_dir,
    make_sample_dataset,
    srcnn_graph_def,
)

# Issue 5: the cluster at least 2x faster than "the challenge's own loop (in one process,
# TensorFlow inference then TensorFlow metrics, image after image)": the quality stage.
TARGET_SPEEDUP = 2.0
TARGET_OVERHEAD = 0.10  # issue 5: quality stage <= inference of its images + 10%
SCALE, BORDER = 4, 16


@dataclass(frozen=True)
class ClusterRun:
    total_s: float
    quality_wall_s: float
    timing_wall_s: float
    busy_s: dict[str, float]
    psnr: float
    msssim: float
    runtime_ms: float
    runs: int
    timed_runs_s: float  # model and baseline runs of the timing protocol, at their medians
    session_runs_s: float  # session.run alone in the inference worker, the quality images'
    protocol_runs: str
    peak_memory_mb: float


@dataclass(frozen=True)
class LoopRun:
    total_s: float
    quality_s: float
    inference_s: float
    metrics_s: float
    timing_s: float
    psnr: float
    msssim: float
    runtime_ms: float


def inputs(data: Path | None, scratch: Path) -> tuple[Path, Path, str]:
    """(dataset folder, model file, description)."""
    if data is not None and (data / "models_pretrained" / "div2k_srcnn.pb").is_file():
        return data / "div2k", data / "models_pretrained" / "div2k_srcnn.pb", f"{data}"
    dataset = make_sample_dataset(scratch / "samples", Track.A)
    model = scratch / "srcnn_shaped.pb"
    model.write_bytes(srcnn_graph_def())
    return dataset, model, "generated samples (no challenge data found)"


def run_cluster(dataset: Path, model: Path, scratch: Path) -> ClusterRun:
    cluster = LocalCluster(
        ports={s: free_port() for s in ("inference", "metrics", "scorer")},
        log_dir=scratch / "logs",
        extra_env={"PIRM_STORE": str(scratch / "scorer.db"), "PIRM_STATE_DIR": str(scratch),
                   "PIRM_BASELINE_A": str(model)},
        restart=False,
    )
    cluster.start()
    try:
        with ScorerClient(cluster.target("scorer"), deadline_s=300,
                          token=cluster.token()) as client:
            started = time.perf_counter()
            job = client.submit(Track.A, model, dataset, team="bench")
            job = client.wait(job.job_id)
            total = time.perf_counter() - started
        session_runs_s = session_run_seconds(cluster, inference_model_name(job.model_sha256))
    finally:
        cluster.stop()
    if job.error:
        raise SystemExit(f"cluster job failed: {job.error}")
    r = job.result
    stages = dict(r.stage_seconds)
    sides = (r.runtime, r.baseline_runtime)
    return ClusterRun(
        total_s=total, quality_wall_s=stages.pop("quality_wall"),
        timing_wall_s=stages.pop("timing_wall"), busy_s=stages, psnr=r.psnr, msssim=r.msssim,
        runtime_ms=r.runtime.median_ms, runs=r.runtime.runs,
        timed_runs_s=sum((t.runs + t.warmup_runs) * t.median_ms for t in sides) / 1000,
        protocol_runs=" + ".join(f"{t.warmup_runs} warm-up + {t.runs} timed" for t in sides),
        peak_memory_mb=r.runtime.peak_memory_mb, session_runs_s=session_runs_s,
    )


def session_run_seconds(cluster: LocalCluster, model: str) -> float:
    """The model's session.run time in the inference worker over its recorded calls (the
    quality images; timing runs are not recorded), from Triton's statistics extension."""
    security = ChannelSecurity(token=cluster.token(Role.INTERNAL))
    with open_channel(cluster.target("inference"), 64, security) as channel:
        stats = oip_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            oip.ModelStatisticsRequest(name=model), timeout=10)
    return sum(s.inference_stats.compute_infer.ns for s in stats.model_stats) / 1e9


def run_loop(dataset: Path, model: Path) -> LoopRun:
    """The official script's loop, image after image, in one process."""
    import tensorflow as tf

    started = time.perf_counter()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(model.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    inference_s = metrics_s = 0.0
    psnrs, msssims = [], []
    # Not a `with` block: inside one, the session's graph would be the default and the
    # metrics would build graph ops instead of running eagerly as in bench-metrics.
    session = tf.compat.v1.Session(graph=graph)
    try:
        for path in sorted((dataset / "original").glob("*.png")):
            target = np.asarray(Image.open(path).convert("RGB"))
            h, w = target.shape[0] // SCALE * SCALE, target.shape[1] // SCALE * SCALE
            target = target[:h, :w]
            model_input = x4_input(target)
            t0 = time.perf_counter()
            output = session.run("output:0", {"input:0": model_input})
            t1 = time.perf_counter()
            out = np.clip(output[:, BORDER:-BORDER, BORDER:-BORDER], 0, 1)
            ref = np.clip(target[None, BORDER:-BORDER, BORDER:-BORDER] / 255, 0, 1)
            ref = ref.astype(np.float32)
            psnrs.append(float(tf.image.psnr(out, ref, max_val=1.0)[0]))
            msssims.append(float(tf.image.ssim_multiscale(out, ref, max_val=1.0)[0]))
            inference_s += t1 - t0
            metrics_s += time.perf_counter() - t1
        quality_s = time.perf_counter() - started
        runtime_ms = official_runtime_ms(session, dataset)
    finally:
        session.close()
    total = time.perf_counter() - started
    return LoopRun(total_s=total, quality_s=quality_s, inference_s=inference_s,
                   metrics_s=metrics_s, timing_s=total - quality_s, psnr=float(np.mean(psnrs)),
                   msssim=float(np.mean(msssims)), runtime_ms=runtime_ms)


def x4_input(image: np.ndarray) -> np.ndarray:
    """The model's input: the image's bicubic x1/4 then x4 round trip (PIL), 1xHxWx3 in [0, 1]."""
    h, w = image.shape[:2]
    low = Image.fromarray(image).resize((w // SCALE, h // SCALE), Image.Resampling.BICUBIC)
    return np.asarray(low.resize((w, h), Image.Resampling.BICUBIC), np.float32)[None] / 255


def official_runtime_ms(session: object, dataset: Path) -> float:
    """4 runs on the HD image's x4 input (the bicubic round trip), the first two discarded."""
    hd = np.asarray(Image.open(sorted((dataset / "HD_res").glob("*.png"))[0]).convert("RGB"))
    image = x4_input(hd)
    kept = []
    for run in range(4):
        t0 = time.perf_counter()
        session.run("output:0", {"input:0": image})  # type: ignore[attr-defined]
        if run >= 2:
            kept.append((time.perf_counter() - t0) * 1000.0)
    return float(np.mean(kept))


def report(origin: str, images: int, ours: ClusterRun, loop: LoopRun) -> None:
    print(f"\nbench-e2e: track A validation of the SRCNN baseline, {images} images ({origin}); "
          f"{os.cpu_count()} CPUs")
    print(f"\n  {'':38}{'cluster':>10}{'in-process':>12}{'loop/cluster':>14}")
    rows = [
        ("whole evaluation (s)", ours.total_s, loop.total_s),
        ("  quality stage (s)", ours.quality_wall_s, loop.quality_s),
        ("  runtime measurement (s)", ours.timing_wall_s, loop.timing_s),
    ]
    for name, a, b in rows:
        print(f"  {name:38}{a:10.2f}{b:12.2f}{b / a:13.2f}x")
    print("\n  cluster pipeline, busy seconds per stage: "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(ours.busy_s.items())))
    print(f"  loop: inference {loop.inference_s:.2f} s, TensorFlow metrics {loop.metrics_s:.2f} s")
    inference = ours.busy_s.get("inference", float("nan"))
    overhead = ours.quality_wall_s / inference - 1.0
    print(f"  cluster quality stage vs its inference calls: {ours.quality_wall_s:.2f} s / "
          f"{inference:.2f} s = +{100 * overhead:.1f}%; session.run alone in the inference "
          f"worker {ours.session_runs_s:.2f} s (loop: {loop.inference_s:.2f} s)")
    print(f"  cluster runtime measurement: model and baseline interleaved, {ours.protocol_runs} "
          f"HD runs = {ours.timed_runs_s:.2f} s at their medians, then the memory probe "
          f"({ours.peak_memory_mb:.0f} MiB) in a fresh process; the loop: 4 runs")
    print(f"\n  figures: cluster PSNR {ours.psnr:.4f} dB, MS-SSIM {ours.msssim:.6f}, runtime "
          f"{ours.runtime_ms:.1f} ms (median of {ours.runs} interleaved with the baseline); loop "
          f"PSNR {loop.psnr:.4f}, MS-SSIM {loop.msssim:.6f} (TensorFlow float32), runtime "
          f"{loop.runtime_ms:.1f} ms (mean of 2 kept runs)")
    quality = loop.quality_s / ours.quality_wall_s
    print("\nTargets (issue 5)")
    print(f"  cluster >= {TARGET_SPEEDUP:.0f}x faster than the loop (TensorFlow inference then "
          f"TensorFlow metrics, image after image)   {quality:6.2f}x  "
          f"{'met' if quality >= TARGET_SPEEDUP else 'NOT MET'}")
    print(f"  quality stage <= its inference + {100 * TARGET_OVERHEAD:.0f}%"
          f"{'':62}+{100 * overhead:4.1f}%  {'met' if overhead <= TARGET_OVERHEAD else 'NOT MET'}")
    # A lower bound of any evaluation that runs the same TensorFlow on the same 2 cores: the
    # images' inference plus the HD runs that the runtime protocol needs, one after the other.
    bound = loop.inference_s + ours.timed_runs_s
    print(f"  whole evaluation (not a target: the runtime protocols differ)"
          f"{'':38}{loop.total_s / ours.total_s:5.2f}x\n"
          f"    2x would need <= {loop.total_s / 2:.1f} s; the images' inference "
          f"({loop.inference_s:.1f} s in the loop) plus the protocol's HD runs "
          f"({ours.timed_runs_s:.1f} s) already take {bound:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="challenge data folder (default: PIRM_DATA "
                        "or ../shared/pirm2018)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pirm-bench-e2e-", dir=REPO_ROOT / "build") as tmp:
        scratch = Path(tmp)
        dataset, model, origin = inputs(args.data or challenge_data_dir(), scratch)
        images = len(list((dataset / "original").glob("*.png")))
        print(f"bench-e2e: cluster first, then the in-process loop ({images} images)", flush=True)
        ours = run_cluster(dataset, model, scratch)
        loop = run_loop(dataset, model)
    report(origin, images, ours, loop)


if __name__ == "__main__":
    main()
