"""make bench-cli: `pirm status JOB`, `pirm jobs` and `pirm leaderboard --track A` timed as whole
processes against a running scorer, beside a bare `python -c 'import grpc'` in the same run
(issue 16: these commands start and answer in well under a second).

The scorer runs alone (`python -m services.scorer`, authentication on, as `pirm up` starts it):
the three commands only read its store, so inference and metrics play no part. The store is
filled first, through the scorer's own JobStore, with finished jobs of several teams on both
tracks (scores from the scoring formula), so that the listing and the boards have rows to print.
The commands run as a user's shell runs them on the machine that ran `pirm up`: the console
script, the scorer's address in $PIRM_SCORER_TARGET, its tokens file found by
$PIRM_TOKENS_FILE. Runs are interleaved (baseline, status, jobs, leaderboard, baseline, ...), so
that drift of a shared machine spreads over all of them. A command that fails, or does not print
what it was asked for, fails the benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.common.auth import write_tokens_file
from services.common.cluster import LOCAL_CALLERS, free_port, wait_serving
from services.common.supervision import SUPERVISOR_PID
from services.core.jobs import JobState
from services.core.timing import DeviceTiming, Timing
from services.core.track import Phase, Track
from services.scorer.jobs import JobResult, JobSpec
from services.scorer.scoring import ScoreInputs, compute_scores, score_constants
from services.scorer.store import JobStore

PIRM = str(Path(sys.executable).parent / "pirm")
TARGET_S = 1.0  # "well under a second"
BASELINE_MS = {Track.A: 3239.0, Track.B: 3274.0}  # SRCNN on this machine, about


def timing(median_ms: float) -> DeviceTiming:
    return DeviceTiming(
        timing=Timing(median_ms=median_ms, p90_ms=median_ms * 1.08, min_ms=median_ms * 0.95,
                      max_ms=median_ms * 1.2, mean_ms=median_ms * 1.02, stdev_ms=median_ms * 0.04,
                      runs=12, ci95_low_ms=median_ms * 0.97, ci95_high_ms=median_ms * 1.04,
                      warmup_runs=3),
        device="CPU:0", intra_op_threads=2, inter_op_threads=1, node="bench",
        input_shape=(1, 720, 1280, 3), peak_memory_mb=400.0)


def fill_store(path: Path, jobs: int, teams: int) -> list[str]:
    """`jobs` finished validation jobs, teams and tracks in turn; returns their ids."""
    store = JobStore(path)
    ids = []
    try:
        for n in range(jobs):
            track = (Track.A, Track.B)[n % 2]
            model = f"bench model {n}".encode()
            spec = JobSpec(track=track, phase=Phase.VALIDATION, dataset=f"/data/{track.value}",
                           model_sha256=hashlib.sha256(model).hexdigest(),
                           model_name=f"model-{n}.pb", team=f"team-{n % teams:02d}")
            job, _ = store.create_job(spec, model)
            inputs = ScoreInputs(track=track, phase=Phase.VALIDATION,
                                 psnr=(27.0 if track is Track.A else 21.5) + 0.05 * n,
                                 msssim=(0.95 if track is Track.A else 0.90) + 0.001 * n,
                                 runtime_ms=400.0 + 37.0 * n,
                                 baseline_runtime_ms=BASELINE_MS[track])
            result = JobResult(
                psnr=inputs.psnr, msssim=inputs.msssim, mos=None,
                runtime=timing(inputs.runtime_ms),
                baseline_runtime=timing(inputs.baseline_runtime_ms),
                scores=compute_scores(inputs), constants=score_constants(inputs), images=4,
                software="bench", speed_ratio=inputs.baseline_runtime_ms / inputs.runtime_ms)
            store.finish(job.job_id, JobState.SUCCEEDED, result, from_state=JobState.QUEUED)
            ids.append(job.job_id)
    finally:
        store.close()
    return ids


def run(command: list[str], env: dict[str, str], shown: str) -> float:
    """Seconds from start to exit of one process; it must succeed and print `shown`."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or shown not in done.stdout:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}):\n"
                         f"{done.stdout[-1000:]}{done.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="processes per command")
    parser.add_argument("--jobs", type=int, default=40, help="finished jobs in the store")
    parser.add_argument("--teams", type=int, default=20)
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pirm-bench-cli-") as folder:
        state = Path(folder)
        job_ids = fill_store(state / "scorer.db", args.jobs, args.teams)
        write_tokens_file(state / "tokens", LOCAL_CALLERS)
        port = free_port()
        target = f"127.0.0.1:{port}"
        env = dict(os.environ, PIRM_SCORER_TARGET=target, PIRM_TOKENS_FILE=str(state / "tokens"))
        scorer_env = dict(
            env, PIRM_SCORER_HOST="127.0.0.1", PIRM_SCORER_PORT=str(port),
            PIRM_SCORER_METRICS_PORT="0", PIRM_STORE=str(state / "scorer.db"),
            PIRM_STATE_DIR=str(state), **{SUPERVISOR_PID: str(os.getpid())},
            # Never called: no job is queued.
            PIRM_INFERENCE_TARGET=f"127.0.0.1:{free_port()}",
            PIRM_METRICS_TARGET=f"127.0.0.1:{free_port()}")
        with (state / "scorer.log").open("wb") as log:
            scorer = subprocess.Popen([sys.executable, "-m", "services.scorer"], env=scorer_env,
                                      stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_serving(target, timeout_s=120)
            commands = {
                "python -c 'import grpc'": ([sys.executable, "-c", "import grpc"], ""),
                "pirm status JOB": ([PIRM, "status", job_ids[0]], "SUCCEEDED"),
                "pirm jobs": ([PIRM, "jobs"], job_ids[-1]),
                "pirm leaderboard --track A": ([PIRM, "leaderboard", "--track", "A"], "team-"),
            }
            for command, shown in commands.values():  # warm the page cache; not counted
                run(command, env, shown)
            seconds: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(args.runs):
                for name, (command, shown) in commands.items():
                    seconds[name].append(run(command, env, shown))
        finally:
            scorer.terminate()
            scorer.wait(timeout=30)
    load_after = os.getloadavg()

    baseline = statistics.median(seconds["python -c 'import grpc'"])
    print(f"{args.runs} runs each, interleaved; a scorer with {args.jobs} finished jobs of "
          f"{args.teams} teams; load average {load_before[0]:.1f} at the start, "
          f"{load_after[0]:.1f} at the end ({os.cpu_count()} cores)")
    print(f"{'command':30} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'ours / baseline':>16}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:30} {1000 * median:10.0f} {1000 * min(values):8.0f} "
              f"{1000 * max(values):8.0f} {median / baseline:16.2f}")
    slowest = max(statistics.median(v) for name, v in seconds.items() if name.startswith("pirm"))
    print(f"slowest command's median {1000 * slowest:.0f} ms: "
          f"{'under' if slowest < TARGET_S else 'NOT under'} the {TARGET_S:.0f} s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
