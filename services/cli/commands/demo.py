"""`make run`: start the cluster, evaluate the SRCNN baseline of both tracks, print leaderboards.

Uses the challenge's data and models from PIRM_DATA or ../shared/pirm2018 when present;
otherwise a generated sample dataset and an SRCNN-shaped graph, so no network is needed."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from services.cli.output import leaderboard_table, print_json
from services.client import ScorerClient, leaderboard_rows
from services.common.cluster import LocalCluster, StartFailed, free_port
from services.core.track import Track


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="start the cluster, evaluate the baselines of both tracks, print leaderboards"
    )
    demo.add_argument("--data", type=Path, help="challenge data folder (default: PIRM_DATA, "
                      "../shared/pirm2018, else generated samples)")
    demo.add_argument("--json", action="store_true",
                      help="print the jobs and both leaderboards as JSON (progress on stderr)")
    demo.set_defaults(run=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    return run_demo(args.data, args.json)


# With --json, stdout carries only the JSON document; what is said goes to stderr.
_SAY_TO = {"file": sys.stdout}


def _say(text: str) -> None:
    print(text, file=_SAY_TO["file"], flush=True)


def demo_inputs(data: Path | None, state: Path
                ) -> tuple[dict[Track, Path], dict[Track, Path], str]:
    """Per track: the dataset folder and the baseline model file, and where they come from
    (generated in `state` without the challenge's data)."""
    from services.scorer.samples import (
        BASELINE_FILES,
        DATASET_FOLDERS,
        baseline_graph,
        challenge_data_dir,
        make_sample_dataset,
    )

    data = data or challenge_data_dir()
    if data is not None and all(
        (data / "models_pretrained" / BASELINE_FILES[t]).is_file() for t in Track
    ):
        datasets = {t: data / DATASET_FOLDERS[t] for t in Track}
        models = {t: data / "models_pretrained" / BASELINE_FILES[t] for t in Track}
        return datasets, models, f"challenge data in {data}"
    samples = state / "sample-data"
    _say(f"No challenge data found: preparing sample data in {samples} and an SRCNN-shaped "
         "baseline graph (TensorFlow's import) ...")
    datasets = {t: make_sample_dataset(samples, t) for t in Track}
    baseline_graph(Track.A, None, state)  # writes the SRCNN-shaped graph once
    models = dict.fromkeys(Track, state / "srcnn_shaped.pb")
    return datasets, models, f"generated samples in {samples} (no challenge data found)"


def run_demo(data: Path | None, as_json: bool = False) -> int:
    from services.scorer.samples import REPO_ROOT

    _SAY_TO["file"] = sys.stderr if as_json else sys.stdout
    state = REPO_ROOT / "var"
    datasets, models, origin = demo_inputs(data, state)
    _say(f"Evaluating the SRCNN baselines on {origin}")
    with tempfile.TemporaryDirectory(prefix="pirm-demo-") as tmp:
        cluster = LocalCluster(
            ports={s: free_port() for s in ("inference", "metrics", "scorer")},
            metrics_ports=dict.fromkeys(("inference", "metrics", "scorer"), 0),  # not scraped
            log_dir=state / "logs",
            extra_env={
                "PIRM_STORE": str(Path(tmp) / "scorer.db"),
                "PIRM_STATE_DIR": str(state),
                "PIRM_BASELINE_A": str(models[Track.A]),
                "PIRM_BASELINE_B": str(models[Track.B]),
            },
        )
        _say(f"Starting inference, metrics and scorer (logs in {state / 'logs'}) ...")
        started = time.monotonic()
        try:
            cluster.start(say=_say)
        except StartFailed as error:
            raise SystemExit(f"pirm demo: {error}") from None
        try:
            return _evaluate(cluster.target("scorer"), cluster.token(), datasets, models, started,
                             as_json)
        finally:
            cluster.stop()


def _evaluate(
    scorer: str, token: str | None, datasets: dict[Track, Path], models: dict[Track, Path],
    started: float, as_json: bool,
) -> int:
    from services.cli.progress import follow_jobs

    failed = False
    summaries: list[dict[str, Any]] = []
    boards: dict[str, list[dict[str, Any]]] = {}
    with ScorerClient(scorer, token=token) as client:
        for track in Track:
            job = client.submit(track, models[track], datasets[track],
                                team="SRCNN baseline", model_name=models[track].name)
            _say(f"\nTrack {track.value}: job {job.job_id}, {models[track].name} on "
                 f"{datasets[track]}")
            s = follow_jobs(client, [job.job_id])[0]
            summaries.append(s)
            if s["state"] != "SUCCEEDED":
                failed = True
                _say(f"  {s['state']}: {s.get('error', '')}")
                continue
            lo, hi = s["runtime_ci95_ms"]
            _say(f"  PSNR {s['psnr']:.4f} dB, MS-SSIM {s['msssim']:.6f}, runtime "
                 f"{s['runtime_ms']:.1f} ms [95% CI {lo:.1f}, {hi:.1f}], baseline "
                 f"{s['baseline_runtime_ms']:.1f} ms")
        for track in Track:
            boards[track.value] = leaderboard_rows(client.leaderboard(track, by="a"))
            _say("\n" + leaderboard_table(track.value, "a", boards[track.value]))
    _say(f"\nDone in {time.monotonic() - started:.0f} s.")
    if as_json:
        print_json({"jobs": summaries, "leaderboards": boards})
    return 1 if failed else 0
