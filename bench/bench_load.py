"""make bench-load: many clients submitting many small jobs to a local cluster, repeated on the
same cluster (a soak), with correctness and memory checks (issue 8).

The cluster: `pirm up`'s three processes on free ports, authentication on. Every client uses
the organiser token and submits for its own team (`load-00`, `load-01`, ...), so that the
default admission limits (20 queued or running jobs per team, 1000 queued) hold as shipped:
with the defaults (16 clients, 200 jobs) a client has at most 13 jobs in flight. A
RESOURCE_EXHAUSTED answer is retried after its `retry-after-s` hint (counted, and capped by
`--max-retry-wait`). Timing options are made small (1 warm-up run, 2 to 3 runs, no minimum
time), and the track B baseline is the tiny model itself, so that a job costs its one patch,
a few runs on the HD image and the memory probe (a fresh process per job).

The work: a generated track B dataset with one patch per photo, and an affine model,
clip(0.9 x + 0.02), whose PSNR is computed here independently with NumPy (track B: the model's
output and the Canon patch / 255, both clipped to [0, 1]; mean over patches).

Each round: every client submits its share of the jobs (distinct request ids), then polls them
until final. Then: ListJobs (organiser: every team) must hold exactly the accepted jobs, one
per request id, all SUCCEEDED with the expected PSNR (1e-4); a resubmitted request id must
return the job it made. Peak memory of each service (its process, and its process tree:
inference runs TensorFlow in worker processes) is read from /proc after each round (VmHWM,
reset at each round's start) and sampled at 5 Hz (sum of VmRSS over the tree).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pirm.v1 import scorer_pb2  # noqa: E402

from services.client import FINAL_STATES, ScorerClient  # noqa: E402
from services.common.cluster import SERVICES, LocalCluster, free_port  # noqa: E402
from services.core.track import Track  # noqa: E402
from services.scorer.samples import make_sample_dataset  # noqa: E402

SCALE, OFFSET = 0.9, 0.02  # the tiny model: clip(0.9 x + 0.02)
PSNR_TOLERANCE = 1e-4
# Memory is flat when a round's peak exceeds the first round's by less than this fraction, or
# by less than this many MiB (small processes grow by a few MiB of allocator noise).
FLAT_FRACTION, FLAT_MIB = 0.10, 32.0
POLL_S = 0.25
MIB = 2**20

# The scorer's settings for the run (documented in the module docstring and the README).
CLUSTER_ENV = {
    "PIRM_TIMING_WARMUP_RUNS": "1",
    "PIRM_TIMING_MIN_RUNS": "2",
    "PIRM_TIMING_MIN_SECONDS": "0",
    "PIRM_TIMING_MAX_RUNS": "3",
}


# -- configuration and records --------------------------------------------------------------


@dataclass(frozen=True)
class LoadConfig:
    clients: int
    jobs: int
    rounds: int
    max_seconds: float
    concurrency: int
    max_retry_wait_s: float

    def share(self, client: int) -> int:
        """How many of the round's jobs client `client` submits."""
        return self.jobs // self.clients + (1 if client < self.jobs % self.clients else 0)


@dataclass
class Submission:
    team: str
    request_id: str
    job_id: str = ""
    submit_s: float = 0.0  # the accepted SubmitJob call
    exhausted: int = 0  # RESOURCE_EXHAUSTED answers before it was accepted
    error: str = ""  # not accepted: why
    final: scorer_pb2.Job | None = None


@dataclass(frozen=True)
class MemorySample:
    """Peak memory of one service in one round, MiB."""

    process_hwm: float  # VmHWM of the service's own process
    tree_hwm: float  # sum of VmHWM over the process and its descendants alive at the end
    tree_rss_peak: float  # largest sampled sum of VmRSS over the tree (5 Hz)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class RoundResult:
    number: int
    wall_s: float
    submissions: list[Submission]
    listed: list[scorer_pb2.Job]
    memory: dict[str, MemorySample]
    checks: list[Check] = field(default_factory=list)

    @property
    def accepted(self) -> list[Submission]:
        return [s for s in self.submissions if s.job_id]

    @property
    def finished(self) -> list[Submission]:
        return [s for s in self.accepted if s.final is not None]

    @property
    def finals(self) -> list[scorer_pb2.Job]:
        """The final state of each accepted job that reached one."""
        return [s.final for s in self.accepted if s.final is not None]


# -- the work: dataset, model, expected figures ---------------------------------------------


def tiny_model() -> bytes:
    """The affine model as a frozen graph (input:0 -> output:0)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3], name="input")
        tf.identity(x * SCALE + OFFSET, name="output")
    return bytes(graph.as_graph_def().SerializeToString())


def expected_psnr(dataset: Path) -> float:
    """Track B's PSNR of the affine model, in NumPy: per patch, output (float32, as the model
    computes it) and target / 255, both clipped to [0, 1]; MSE in float64; mean over patches."""
    values = []
    for source in sorted((dataset / "patches" / "iphone").glob("*.jpg")):
        x = np.asarray(Image.open(source).convert("RGB")).astype(np.float32) / np.float32(255)
        output = np.clip(x * np.float32(SCALE) + np.float32(OFFSET), 0, 1).astype(np.float64)
        target = np.asarray(Image.open(dataset / "patches" / "canon" / source.name)
                            .convert("RGB")).astype(np.float64) / 255.0
        mse = float(np.mean((output - np.clip(target, 0, 1)) ** 2))
        values.append(10.0 * np.log10(1.0 / mse))
    return float(np.mean(values))


# -- memory of the services -----------------------------------------------------------------


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """The process and every process below it (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def reset_peaks(pid: int) -> None:
    """Resets VmHWM of the tree (writing 5 to clear_refs), so that each round has its peak."""
    for member in descendants(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{member}/clear_refs").write_text("5")


class MemoryWatch:
    """Samples each service's tree RSS at 5 Hz in a thread while the round runs."""

    def __init__(self, pids: dict[str, int], period_s: float = 0.2) -> None:
        self._pids = pids
        self._period = period_s
        self._peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryWatch:
        for pid in self._pids.values():
            reset_peaks(pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            for service, pid in self._pids.items():
                rss = sum(_status_kib(p, "VmRSS") for p in descendants(pid))
                self._peak[service] = max(self._peak[service], rss)

    def samples(self) -> dict[str, MemorySample]:
        return {
            service: MemorySample(
                process_hwm=_status_kib(pid, "VmHWM") / 1024,
                tree_hwm=sum(_status_kib(p, "VmHWM") for p in descendants(pid)) / 1024,
                tree_rss_peak=self._peak[service] / 1024,
            )
            for service, pid in self._pids.items()
        }


# -- clients ----------------------------------------------------------------------------------


def retry_after_s(error: grpc.RpcError) -> float:
    """The `retry-after-s` trailing metadata of a refusal (60 s when missing)."""
    for item in error.trailing_metadata() or ():
        if item.key == "retry-after-s":
            return float(item.value)
    return 60.0


def submit_one(client: ScorerClient, submission: Submission, model: bytes, dataset: Path,
               deadline: float, max_wait_s: float) -> None:
    """Submits until accepted, waiting out RESOURCE_EXHAUSTED answers; records the accepted
    call's latency, or the reason it was never accepted."""
    while True:
        started = time.perf_counter()
        try:
            job = client.submit(Track.B, model, dataset, team=submission.team,
                                model_name="tiny-affine", request_id=submission.request_id)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                submission.error = f"{error.code().name}: {error.details()}"
                return
            submission.exhausted += 1
            wait = min(retry_after_s(error), max_wait_s)
            if time.monotonic() + wait > deadline:
                submission.error = "RESOURCE_EXHAUSTED until the time limit"
                return
            time.sleep(wait)
            continue
        submission.submit_s = time.perf_counter() - started
        submission.job_id = job.job_id
        return


def await_final(client: ScorerClient, submissions: list[Submission], deadline: float) -> None:
    """Polls the accepted jobs (GetJob) until each is final or the time is up."""
    pending = [s for s in submissions if s.job_id]
    while pending and time.monotonic() < deadline:
        still = []
        for submission in pending:
            job = client.get(submission.job_id)
            if job.state in FINAL_STATES:
                submission.final = job
            else:
                still.append(submission)
        pending = still
        if pending:
            time.sleep(POLL_S)


def run_client(target: str, token: str | None, submissions: list[Submission], model: bytes,
               dataset: Path, deadline: float, max_wait_s: float) -> None:
    with ScorerClient(target, token=token, deadline_s=60.0) as client:
        for submission in submissions:
            submit_one(client, submission, model, dataset, deadline, max_wait_s)
        await_final(client, submissions, deadline)


def plan(config: LoadConfig, number: int) -> list[list[Submission]]:
    """Each client's submissions in round `number`: its own team, distinct request ids."""
    return [
        [Submission(team=f"load-{c:02d}", request_id=f"round{number}-client{c}-job{k}")
         for k in range(config.share(c))]
        for c in range(config.clients)
    ]


# -- one round ----------------------------------------------------------------------------------


def run_round(cluster: LocalCluster, config: LoadConfig, number: int, model: bytes,
              dataset: Path) -> RoundResult:
    per_client = plan(config, number)
    target, token = cluster.target("scorer"), cluster.token()
    pids = {s: cluster.pid(s) for s in SERVICES}
    with MemoryWatch(pids) as memory:
        started = time.monotonic()
        deadline = started + config.max_seconds
        with ThreadPoolExecutor(config.clients) as pool:
            futures = [pool.submit(run_client, target, token, subs, model, dataset, deadline,
                                   config.max_retry_wait_s) for subs in per_client]
            for future in futures:
                future.result()
        wall = time.monotonic() - started
    submissions = [s for subs in per_client for s in subs]
    with ScorerClient(target, token=token) as client:
        listed = [j for j in client.jobs() if j.request_id.startswith(f"round{number}-")]
        resubmitted = resubmit_firsts(client, per_client, model, dataset)
    result = RoundResult(number, wall, submissions, listed, memory.samples())
    result.checks = round_checks(result, resubmitted)
    return result


def resubmit_firsts(client: ScorerClient, per_client: list[list[Submission]], model: bytes,
                    dataset: Path) -> list[tuple[Submission, str]]:
    """Each client's first request sent again: (submission, job id the scorer answered)."""
    answers = []
    for subs in per_client:
        first = next((s for s in subs if s.job_id), None)
        if first is not None:
            job = client.submit(Track.B, model, dataset, team=first.team,
                                model_name="tiny-affine", request_id=first.request_id)
            answers.append((first, job.job_id))
    return answers


# -- checks --------------------------------------------------------------------------------------


def round_checks(result: RoundResult,
                 resubmitted: list[tuple[Submission, str]]) -> list[Check]:
    accepted, finished = result.accepted, result.finished
    refused = [s for s in result.submissions if not s.job_id]
    keys = Counter((j.team, j.request_id) for j in result.listed)
    duplicates = [k for k, n in keys.items() if n > 1]
    accepted_ids = {s.job_id for s in accepted}
    listed_ids = {j.job_id for j in result.listed}
    not_succeeded = Counter(scorer_pb2.JobState.Name(j.state) for j in result.finals
                            if j.state != scorer_pb2.JOB_STATE_SUCCEEDED)
    errors = {j.error for j in result.finals if j.error}
    moved = [s.request_id for s, job_id in resubmitted if job_id != s.job_id]
    return [
        Check("every submission accepted", not refused,
              f"{len(refused)} refused" + (f": {refused[0].error}" if refused else "")),
        Check("every accepted job final in time", len(finished) == len(accepted),
              f"{len(finished)}/{len(accepted)} final within the time limit"),
        Check("ListJobs holds exactly the accepted jobs",
              listed_ids == accepted_ids and len(result.listed) == len(accepted),
              f"{len(result.listed)} listed, {len(accepted)} accepted, "
              f"{len(listed_ids - accepted_ids)} unknown, "
              f"{len(accepted_ids - listed_ids)} missing"),
        Check("one job per request id", not duplicates,
              f"{len(duplicates)} request ids with several jobs"),
        Check("a resubmitted request id returns its job", not moved,
              f"{len(resubmitted) - len(moved)}/{len(resubmitted)} same job"),
        Check("all SUCCEEDED", not not_succeeded,
              f"{len(result.finals) - sum(not_succeeded.values())}/{len(result.finals)} "
              + ", ".join(f"{n} {state}" for state, n in not_succeeded.items())
              + (f" ({sorted(errors)[0]})" if errors else "")),
    ]


def psnr_check(results: list[RoundResult], expected: float) -> Check:
    values = [j.result.psnr for r in results for j in r.finals
              if j.state == scorer_pb2.JOB_STATE_SUCCEEDED]
    if not values:
        return Check(f"PSNR = NumPy's {expected:.6f} dB within {PSNR_TOLERANCE:g}", False,
                     "no job succeeded")
    worst = max(abs(v - expected) for v in values)
    return Check(f"PSNR = NumPy's {expected:.6f} dB within {PSNR_TOLERANCE:g}",
                 worst <= PSNR_TOLERANCE, f"{len(values)} jobs, largest difference {worst:.2e}")


def is_flat(first: float, last: float) -> bool:
    return last - first <= max(FLAT_FRACTION * first, FLAT_MIB)


def memory_checks(results: list[RoundResult]) -> list[Check]:
    """The last round's peaks against the first's, per service (process and tree HWM)."""
    first, last = results[0].memory, results[-1].memory
    checks = []
    for service in SERVICES:
        for label, pick in (("process", _process), ("tree", _tree)):
            a, b = pick(first[service]), pick(last[service])
            checks.append(Check(f"{service} {label} memory flat", is_flat(a, b),
                                f"round 1 {a:.0f} MiB, round {len(results)} {b:.0f} MiB "
                                f"({b - a:+.0f} MiB)"))
    return checks


def _process(m: MemorySample) -> float:
    return m.process_hwm


def _tree(m: MemorySample) -> float:
    return m.tree_hwm


def cluster_checks(cluster: LocalCluster, pids: dict[str, int]) -> list[Check]:
    restarted = {s: n for s, n in cluster.restarts.items() if n}
    changed = [s for s in SERVICES if cluster.pid(s) != pids[s]]
    return [Check("no service died or restarted", not restarted and not changed,
                  f"restarts {restarted or 'none'}")]


# -- report -------------------------------------------------------------------------------------


def percentiles(values: Iterable[float], points: tuple[int, ...] = (50, 95, 99)) -> list[float]:
    data = list(values)
    if not data:
        return [float("nan")] * len(points)
    return [float(np.percentile(data, p)) for p in points]


def seconds(start: Timestamp, end: Timestamp) -> float:
    """Between two of a job's server-side timestamps (the scorer's clock)."""
    return (end.ToNanoseconds() - start.ToNanoseconds()) / 1e9


def report_round(result: RoundResult) -> None:
    finished = result.finished
    sub = percentiles(s.submit_s * 1000 for s in result.accepted)
    e2e = percentiles(seconds(j.created, j.finished) for j in result.finals)
    run = percentiles(seconds(j.started, j.finished) for j in result.finals)
    exhausted = sum(s.exhausted for s in result.submissions)
    print(f"\nround {result.number}: {len(result.accepted)} accepted, {len(finished)} final in "
          f"{result.wall_s:.1f} s = {len(finished) / result.wall_s:.2f} jobs/s; "
          f"RESOURCE_EXHAUSTED retried {exhausted}; load average {os.getloadavg()[0]:.2f}")
    print(f"  {'latency':32}{'p50':>10}{'p95':>10}{'p99':>10}")
    print(f"  {'SubmitJob call (ms)':32}" + "".join(f"{v:10.1f}" for v in sub))
    print(f"  {'job created -> finished (s)':32}" + "".join(f"{v:10.2f}" for v in e2e))
    print(f"  {'job started -> finished (s)':32}" + "".join(f"{v:10.2f}" for v in run))
    print(f"  {'peak memory (MiB)':32}{'process':>10}{'tree HWM':>10}{'tree RSS':>10}")
    for service, m in result.memory.items():
        print(f"  {service:32}{m.process_hwm:10.0f}{m.tree_hwm:10.0f}{m.tree_rss_peak:10.0f}")
    stages = median_stage_seconds(result.finals)
    print("  median seconds per job stage: "
          + ", ".join(f"{name} {value:.2f}" for name, value in stages.items()))
    print_checks(result.checks)


def median_stage_seconds(jobs: list[scorer_pb2.Job]) -> dict[str, float]:
    """The median over jobs of each stage's seconds in the job's result."""
    names = sorted({name for j in jobs for name in j.result.stage_seconds})
    return {name: float(np.median([j.result.stage_seconds[name] for j in jobs
                                   if name in j.result.stage_seconds])) for name in names}


def report_soak(results: list[RoundResult]) -> None:
    print("\nsoak: peak memory per round (MiB; process VmHWM / tree VmHWM / sampled tree RSS)")
    print(f"  {'round':8}" + "".join(f"{s:>24}" for s in SERVICES) + f"{'jobs/s':>10}")
    for r in results:
        cells = "".join(f"{m.process_hwm:8.0f}{m.tree_hwm:8.0f}{m.tree_rss_peak:8.0f}"
                        for m in r.memory.values())
        print(f"  {r.number:<8}{cells}{len(r.finished) / r.wall_s:10.2f}")
    print(f"  flat: last round - first round <= max({FLAT_FRACTION:.0%} of the first, "
          f"{FLAT_MIB:.0f} MiB), per service, for the process and the tree HWM")


def print_checks(checks: list[Check]) -> None:
    for check in checks:
        print(f"  [{'ok' if check.ok else 'FAIL':>4}] {check.name}: {check.detail}")


# -- main -----------------------------------------------------------------------------------------


def start_cluster(scratch: Path, config: LoadConfig, baseline: Path) -> LocalCluster:
    env = {**CLUSTER_ENV, "PIRM_JOB_CONCURRENCY": str(config.concurrency),
           "PIRM_STORE": str(scratch / "scorer.db"), "PIRM_STATE_DIR": str(scratch),
           "PIRM_BASELINE_B": str(baseline), "PIRM_DATA_ROOTS": str(scratch)}
    cluster = LocalCluster(ports={s: free_port() for s in SERVICES},
                           metrics_ports={s: free_port() for s in SERVICES},
                           log_dir=scratch / "logs", extra_env=env, restart=True)
    cluster.start()
    return cluster


def run(config: LoadConfig, scratch: Path) -> bool:
    dataset = make_sample_dataset(scratch / "samples", Track.B, patches_per_photo=1)
    model = tiny_model()
    baseline = scratch / "tiny.pb"
    baseline.write_bytes(model)
    expected = expected_psnr(dataset)
    patches = len(list((dataset / "patches" / "iphone").glob("*.jpg")))
    print(f"bench-load: {config.clients} clients, {config.jobs} jobs per round, {config.rounds} "
          f"rounds, {config.max_seconds:.0f} s per round at most; scorer concurrency "
          f"{config.concurrency}; track B, {patches} patches per job; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    cluster = start_cluster(scratch, config, baseline)
    try:
        pids = {s: cluster.pid(s) for s in SERVICES}
        results = []
        for number in range(1, config.rounds + 1):
            results.append(run_round(cluster, config, number, model, dataset))
            report_round(results[-1])
            sys.stdout.flush()
        final = [psnr_check(results, expected), *memory_checks(results),
                 *cluster_checks(cluster, pids)]
    finally:
        cluster.stop()
    report_soak(results)
    print("\nchecks over all rounds")
    print_checks(final)
    every = final + [c for r in results for c in r.checks]
    failed = [c for c in every if not c.ok]
    print(f"\n{'all checks passed' if not failed else f'{len(failed)} checks FAILED'}")
    return not failed


def parse(argv: list[str] | None = None) -> LoadConfig:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--jobs", type=int, default=200, help="jobs per round (200)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds on the same cluster (5)")
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="time limit of each round (1800 s)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="jobs the scorer runs at once, PIRM_JOB_CONCURRENCY (2)")
    parser.add_argument("--max-retry-wait", type=float, default=60.0,
                        help="cap on a retry-after-s wait (60 s, the scorer's own hint)")
    args = parser.parse_args(argv)
    return LoadConfig(clients=args.clients, jobs=args.jobs, rounds=args.rounds,
                      max_seconds=args.max_seconds, concurrency=args.concurrency,
                      max_retry_wait_s=args.max_retry_wait)


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    with tempfile.TemporaryDirectory(prefix="pirm-bench-load-") as tmp:
        return 0 if run(config, Path(tmp)) else 1


if __name__ == "__main__":
    raise SystemExit(main())

