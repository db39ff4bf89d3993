"""make bench-e2e: whole evaluations through the cluster against the challenge's own
in-process loop, and the sequential timing protocol against the previous fixed one, in one run
(issues 5 and 19).

The cluster: `pirm up`'s three processes on free ports, once with each timing protocol; the
jobs submitted one after the other and waited for: track A (DIV2K) and track B (DPED) with
their SRCNN baselines as the submitted model, and on track A a model far faster than SRCNN
(a point-wise graph: x * 1.0). Each result says where the time went (busy seconds per
pipeline stage, wall seconds of the quality and timing stages) and how its timing stopped.

The challenge-style loop, in this process, as the official script does it: per image, decode,
bicubic x1/4 (PIL), one TensorFlow session run, then tf.image.psnr and tf.image.ssim_multiscale
(eager); then the runtime: the model run on 4 HD inputs, the first two discarded (SPEC
section 2).

Data: ../shared/pirm2018 (or $PIRM_DATA): div2k and dped (quality images, HD_res/ for timing)
and models_pretrained/{div2k,dped}_srcnn.pb. Without it, the generated sample datasets and
SRCNN-shaped graph that `make run` uses.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from inference import open_inference_pb2 as oip
from inference import open_inference_pb2_grpc as oip_grpc
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from services.client import ScorerClient, stopping_summary  # noqa: E402
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

# Issue 19's goals on this 2-core machine.
TARGET_WHOLE_A = 1.3  # whole track A evaluation vs the challenge's loop
TARGET_B_VS_FIXED = 2.0  # a track B job vs the fixed protocol
TARGET_WIDTH = 0.02  # every ratio interval within +/- 2%
SCALE, BORDER = 4, 16
FOLDERS = {Track.A: "div2k", Track.B: "dped"}


@dataclass(frozen=True)
class ClusterRun:
    total_s: float
    quality_wall_s: float
    timing_wall_s: float
    busy_s: dict[str, float]
    psnr: float
    msssim: float
    runtime_ms: float
    baseline_ms: float
    runs: int
    timed_runs_s: float  # model and baseline runs of the timing protocol, at their medians
    session_runs_s: float  # session.run alone in the inference worker, the quality images'
    protocol_runs: str
    peak_memory_mb: float
    ratio: float
    ratio_ci95: tuple[float, float]
    stopping: dict[str, Any]


@dataclass(frozen=True)
class BenchJob:
    name: str
    track: Track
    model: Path
    dataset: Path


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


def inputs(data: Path | None, scratch: Path) -> tuple[dict[Track, tuple[Path, Path]], str]:
    """{track: (dataset folder, SRCNN model file)}, and where they come from."""
    found = {}
    for track, folder in FOLDERS.items():
        model = data / "models_pretrained" / f"{folder}_srcnn.pb" if data else None
        if data is not None and model is not None and model.is_file():
            found[track] = (data / folder, model)
    if len(found) == len(FOLDERS):
        return found, str(data)
    generated = scratch / "srcnn_shaped.pb"
    generated.write_bytes(srcnn_graph_def())
    return ({track: (make_sample_dataset(scratch / "samples", track), generated)
             for track in FOLDERS}, "generated samples (no challenge data found)")


def fast_model(scratch: Path) -> Path:
    """A point-wise model (x * 1.0): a few ms per HD run, far faster than SRCNN."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3], name="input")
        tf.identity(x * 1.0, name="output")
    path = scratch / "fast.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def run_cluster(jobs: list[BenchJob], baselines: dict[Track, Path], scratch: Path,
                protocol: str) -> dict[str, ClusterRun]:
    """`pirm up`'s cluster with this timing protocol; the jobs one after the other."""
    state = scratch / protocol
    state.mkdir()
    cluster = LocalCluster(
        ports={s: free_port() for s in ("inference", "metrics", "scorer")},
        # Free /metrics ports too: other clusters may run on this machine.
        metrics_ports={s: free_port() for s in ("inference", "metrics", "scorer")},
        log_dir=state / "logs",
        extra_env={"PIRM_STORE": str(state / "scorer.db"), "PIRM_STATE_DIR": str(state),
                   "PIRM_TIMING_PROTOCOL": protocol,
                   **{f"PIRM_BASELINE_{t.value}": str(path) for t, path in baselines.items()}},
        restart=False,
    )
    cluster.start(timeout_s=900)  # a busy shared machine starts TensorFlow slowly
    runs = {}
    try:
        for bench_job in jobs:
            print(f"  {protocol}: {bench_job.name} ...", flush=True)
            with ScorerClient(cluster.target("scorer"), deadline_s=600,
                              token=cluster.token()) as client:
                started = time.perf_counter()
                job = client.submit(bench_job.track, bench_job.model, bench_job.dataset,
                                    team="bench")
                job = client.wait(job.job_id)
                total = time.perf_counter() - started
            if job.error:
                raise SystemExit(f"cluster job {bench_job.name} failed: {job.error}")
            session_runs_s = session_run_seconds(cluster,
                                                 inference_model_name(job.model_sha256))
            run = runs[bench_job.name] = cluster_run(job, total, session_runs_s)
            st = run.stopping
            print(f"    {total:.1f} s (quality {run.quality_wall_s:.1f} s, timing "
                  f"{run.timing_wall_s:.1f} s): ratio {run.ratio:.4f} +/-"
                  f"{100 * width(run):.1f}%, {st['pairs']} pairs, stopped: {st['reason']}",
                  flush=True)
    finally:
        cluster.stop()
    return runs


def cluster_run(job: Any, total: float, session_runs_s: float) -> ClusterRun:
    r = job.result
    stages = dict(r.stage_seconds)
    sides = (r.runtime, r.baseline_runtime)
    return ClusterRun(
        total_s=total, quality_wall_s=stages.pop("quality_wall"),
        timing_wall_s=stages.pop("timing_wall"), busy_s=stages, psnr=r.psnr, msssim=r.msssim,
        runtime_ms=r.runtime.median_ms, baseline_ms=r.baseline_runtime.median_ms,
        runs=r.runtime.runs,
        timed_runs_s=sum((t.runs + t.warmup_runs) * t.median_ms for t in sides) / 1000,
        protocol_runs=" + ".join(f"{t.warmup_runs} warm-up + {t.runs} timed" for t in sides),
        peak_memory_mb=r.runtime.peak_memory_mb, session_runs_s=session_runs_s,
        ratio=r.speed_ratio, ratio_ci95=(r.speed_ratio_ci95_low, r.speed_ratio_ci95_high),
        stopping=stopping_summary(r.timing_stopping),
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


def width(run: ClusterRun) -> float:
    low, high = run.ratio_ci95
    return (high - low) / (high + low)


def report(origin: str, seq: dict[str, ClusterRun], fixed: dict[str, ClusterRun],
           loop: LoopRun, loads: tuple[float, float]) -> None:
    print(f"\nbench-e2e: whole evaluations through the cluster ({origin}); {os.cpu_count()} "
          f"CPUs, load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end (a "
          "shared machine: other work slows both sides)")
    print(f"\n  {'job':26}{'protocol':>11}{'whole s':>9}{'quality':>9}{'timing':>8}"
          f"{'pairs':>7}{'runs/pair':>10}  {'speed ratio [95% CI]':28}{'+/-':>6}  stop")
    for protocol, runs in (("sequential", seq), ("fixed", fixed)):
        for name, run in runs.items():
            st = run.stopping
            blocks = f"{st['solution_block']}:{st['baseline_block']}"
            low, high = run.ratio_ci95
            print(f"  {name:26}{protocol:>11}{run.total_s:9.1f}{run.quality_wall_s:9.1f}"
                  f"{run.timing_wall_s:8.1f}{st['pairs']:7d}{blocks:>10}  "
                  f"{run.ratio:8.4f} [{low:.4f}, {high:.4f}]{'':3}{100 * width(run):5.1f}%  "
                  f"{st['reason']}")
    print(f"  {'challenge loop, track A':26}{'4 runs':>11}{loop.total_s:9.1f}"
          f"{loop.quality_s:9.1f}{loop.timing_s:8.1f}{'':7}{'':10}  (no interval: the mean of "
          f"2 runs)")
    a, b, fast = seq["track A SRCNN"], seq["track B SRCNN"], seq["track A fast model"]
    print(f"\n  runtimes (ms): track A SRCNN {a.runtime_ms:.1f} (baseline {a.baseline_ms:.1f}), "
          f"fast model {fast.runtime_ms:.2f} ({fast.ratio:.0f}x faster), track B SRCNN "
          f"{b.runtime_ms:.1f}; loop {loop.runtime_ms:.1f}")
    for name, run in (("track A SRCNN", a), ("track B SRCNN", b)):
        print(f"  {name}, sequential: {run.protocol_runs} HD runs; fixed: "
              f"{fixed[name].protocol_runs}")
    print(f"  figures: cluster PSNR {a.psnr:.4f} dB, MS-SSIM {a.msssim:.6f}; loop PSNR "
          f"{loop.psnr:.4f}, MS-SSIM {loop.msssim:.6f} (TensorFlow float32)")
    print("\nTargets (issue 19)")
    whole = loop.total_s / a.total_s
    b_gain = fixed["track B SRCNN"].total_s / b.total_s
    rows = [
        (f"whole track A evaluation >= {TARGET_WHOLE_A}x faster than the challenge's loop",
         f"{whole:.2f}x", whole >= TARGET_WHOLE_A),
        (f"a track B job >= {TARGET_B_VS_FIXED:.0f}x faster than with the fixed protocol",
         f"{b_gain:.2f}x", b_gain >= TARGET_B_VS_FIXED),
        (f"a model {fast.ratio:.0f}x faster than SRCNN: timing <= SRCNN's own job's",
         f"{fast.timing_wall_s:.1f} s vs {a.timing_wall_s:.1f} s",
         fast.timing_wall_s <= a.timing_wall_s),
    ]
    widest = max(width(run) for run in seq.values())
    rows.append((f"every sequential ratio interval within +/-{100 * TARGET_WIDTH:.0f}%",
                 f"widest +/-{100 * widest:.1f}%", widest <= TARGET_WIDTH))
    for text, figure, met in rows:
        print(f"  {text:78}{figure:>22}  {'met' if met else 'NOT MET'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="challenge data folder (default: PIRM_DATA "
                        "or ../shared/pirm2018)")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pirm-bench-e2e-", dir=REPO_ROOT / "build") as tmp:
        scratch = Path(tmp)
        data, origin = inputs(args.data or challenge_data_dir(), scratch)
        baselines = {track: model for track, (_, model) in data.items()}
        (a_data, a_model), (b_data, b_model) = data[Track.A], data[Track.B]
        srcnn = [BenchJob("track A SRCNN", Track.A, a_model, a_data),
                 BenchJob("track B SRCNN", Track.B, b_model, b_data)]
        fast = BenchJob("track A fast model", Track.A, fast_model(scratch), a_data)
        print("bench-e2e: the cluster with each protocol, then the in-process loop", flush=True)
        seq = run_cluster([*srcnn, fast], baselines, scratch, "sequential")
        fixed = run_cluster(srcnn, baselines, scratch, "fixed")
        loop = run_loop(a_data, a_model)
    report(origin, seq, fixed, loop, (load_start, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
