"""`make run`: a small challenge of its own on this machine. It writes a definition (both tracks,
a validation phase, SRCNN as each track's baseline row) into var/demo, starts the cluster with
it, enters SRCNN and the faster reference models (frozen from their checkpoints by `pirm
freeze`'s code) as competing teams, each with its own token, and prints both leaderboards and
the exported Markdown tables.

Uses the challenge's data and models from PIRM_DATA or ../shared/pirm2018 when present;
otherwise a generated sample dataset and an SRCNN-shaped graph stand in (one team per track),
so no network is needed."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.cli.output import leaderboard_table, print_json
from services.client import ScorerClient, leaderboard_rows
from services.common.auth import Role
from services.common.cluster import LocalCluster, StartFailed, free_port
from services.core.track import Track

PHASE = "validation"
# Image pairs of each track's dataset the demo evaluates on (the challenge's sample has 350
# track-B patch pairs of 100x100 and 4 full-size DIV2K images of about 2040x1400, each as long
# to run as 3 HD images): a demo's minutes, not the full phase's.
DEMO_IMAGES = {Track.A: 2, Track.B: 40}
# A demo's timing: 1 warm-up and 3 timed runs of each model and of the baseline, interleaved
# (the challenge's protocol takes 10 runs or more; see README, "Timing protocol").
DEMO_TIMING = {"PIRM_TIMING_WARMUP_RUNS": "1", "PIRM_TIMING_MIN_RUNS": "3",
               "PIRM_TIMING_MAX_RUNS": "3", "PIRM_TIMING_MIN_SECONDS": "0"}


@dataclass(frozen=True)
class Team:
    name: str
    track: Track
    reference: str  # the reference model's name (services/reference/networks.py), or srcnn
    # Why the demo leaves it out unless --all-references; measured with one HD (1280x720)
    # image on the 2-core development machine, several sessions sharing it: SRCNN 11.8 s,
    # ResNet 6x16 10.2 s, ResNet 8x32 32 s, ResNet 12x64 71 s, VDSR 63 s (and track A's
    # quality stage runs VDSR on full-size DIV2K images, 3x an HD image each).
    slow: str = ""


TEAMS = (
    Team("srcnn", Track.A, "srcnn"),
    Team("resnet-6x16", Track.A, "div2k_resnet_6_16"),
    Team("vdsr", Track.A, "div2k_vdsr", slow="about 5x SRCNN's time per image"),
    Team("srcnn", Track.B, "srcnn"),
    Team("resnet-8x32", Track.B, "dped_resnet_8_32"),
    Team("dped-resnet-12x64", Track.B, "dped_resnet_12_64", slow="about 6x SRCNN's time per "
                                                                   "image"),
)


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="a small challenge on this machine: SRCNN and the reference models as "
                     "teams, both tracks' leaderboards and tables")
    demo.add_argument("--data", type=Path, help="challenge data folder (default: PIRM_DATA, "
                      "../shared/pirm2018, else generated samples)")
    demo.add_argument("--all-references", action="store_true",
                      help="also the slow reference models (VDSR, DPED's 12x64 ResNet): many "
                           "minutes more")
    demo.add_argument("--json", action="store_true",
                      help="print the jobs, leaderboards and tables as JSON (progress on stderr)")
    demo.set_defaults(run=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    return run_demo(args.data, args.json, args.all_references)


# With --json, stdout carries only the JSON document; what is said goes to stderr.
_SAY_TO = {"file": sys.stdout}


def _say(text: str) -> None:
    print(text, file=_SAY_TO["file"], flush=True)


def demo_inputs(data: Path | None, state: Path
                ) -> tuple[dict[Track, Path], dict[Track, Path], str, Path | None]:
    """Per track: the dataset folder and the SRCNN baseline model file, where they come from
    (generated in `state` without the challenge's data), and the checkpoints' folder (None
    without the challenge's data)."""
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
        return datasets, models, f"challenge data in {data}", data / "models_pretrained"
    samples = state / "sample-data"
    _say(f"No challenge data found: preparing sample data in {samples} and an SRCNN-shaped "
         "baseline graph (TensorFlow's import) ...")
    datasets = {t: make_sample_dataset(samples, t) for t in Track}
    baseline_graph(Track.A, None, state)  # writes the SRCNN-shaped graph once
    models = dict.fromkeys(Track, state / "srcnn_shaped.pb")
    return datasets, models, f"generated samples in {samples} (no challenge data found)", None


def demo_subset(dataset: Path, out: Path, limit: int) -> Path:
    """`dataset` with at most `limit` files in each folder (the same names on both sides of a
    pair: sorted alike), as symbolic links in `out`; the timing images all kept."""
    shutil.rmtree(out, ignore_errors=True)
    for folder in [dataset, *sorted(p for p in dataset.rglob("*") if p.is_dir())]:
        target = out / folder.relative_to(dataset)
        target.mkdir(parents=True, exist_ok=True)
        files = sorted((p for p in folder.iterdir() if p.is_file()),
                       key=lambda p: (len(p.name), p.name))
        keep = files if folder.name == "HD_res" else files[:limit]
        for path in keep:
            (target / path.name).symlink_to(path.resolve())
    return out


def team_models(teams: list[Team], baselines: dict[Track, Path], checkpoints: Path | None,
                state: Path) -> dict[Team, Path]:
    """Each team's .pb: SRCNN's, or the reference model frozen from its checkpoint (kept in
    var/reference; delete it to freeze again), each freeze checked as `pirm freeze` does."""
    models = {}
    for team in teams:
        if team.reference == "srcnn":
            models[team] = baselines[team.track]
            continue
        assert checkpoints is not None
        path = state / "reference" / f"{team.reference}.pb"
        if not path.is_file():
            from services.reference.freeze import freeze_checked
            from services.reference.networks import REFERENCES

            frozen = freeze_checked(REFERENCES[team.reference], checkpoints)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(frozen.graph_def)
            _say(f"  froze {team.reference} from its checkpoint into {path} (max |frozen - "
                 f"checkpoint| = {frozen.max_error:.1e})")
        models[team] = path
    return models


def definition(datasets: dict[Track, Path], baselines: dict[Track, Path]) -> str:
    """The demo's challenge: both tracks, a validation phase, SRCNN as the baseline row."""
    lines = ["title: make run, a small challenge on this machine", "tracks:"]
    for track in Track:
        lines += [f"  {track.value}:", "    baselines:", f"      SRCNN: {baselines[track]}",
                  "    phases:", f"      - name: {PHASE}", f"        dataset: {datasets[track]}",
                  "        submissions_per_day: 2"]
    return "\n".join(lines) + "\n"


def run_demo(data: Path | None, as_json: bool = False, all_references: bool = False) -> int:
    from services.scorer.samples import REPO_ROOT

    _SAY_TO["file"] = sys.stderr if as_json else sys.stdout
    state = REPO_ROOT / "var"
    folder = state / "demo"
    datasets, baselines, origin, checkpoints = demo_inputs(data, state)
    teams = [t for t in TEAMS if t.reference == "srcnn" or checkpoints is not None]
    skipped = [t for t in teams if t.slow and not all_references]
    teams = [t for t in teams if t not in skipped]
    for team in skipped:
        _say(f"Skipping team {team.name} (track {team.track.value}, {team.reference}): "
             f"{team.slow}; `pirm demo --all-references` evaluates it too")
    if checkpoints is None:
        _say("Without the reference checkpoints the SRCNN-shaped graph is the only team.")
    datasets = {t: demo_subset(datasets[t], folder / "data" / t.value, DEMO_IMAGES[t])
                for t in Track}
    models = team_models(teams, baselines, checkpoints, state)
    challenge = folder / "challenge.yaml"
    challenge.write_text(definition(datasets, baselines))
    tokens = folder / "tokens"
    tokens.unlink(missing_ok=True)  # a token per team of this run
    _say(f"The challenge: {challenge} ({DEMO_IMAGES[Track.A]} images in track A, "
         f"{DEMO_IMAGES[Track.B]} patch pairs in track B, of {origin}; 1 warm-up and 3 timed "
         "runs per model)")
    with tempfile.TemporaryDirectory(prefix="pirm-demo-") as tmp:
        cluster = LocalCluster(
            ports={s: free_port() for s in ("inference", "metrics", "scorer")},
            metrics_ports=dict.fromkeys(("inference", "metrics", "scorer"), 0),  # not scraped
            log_dir=state / "logs",
            teams=tuple(sorted({t.name for t in teams})),
            extra_env={
                "PIRM_STORE": str(Path(tmp) / "scorer.db"),
                "PIRM_STATE_DIR": str(state),
                "PIRM_TOKENS_FILE": str(tokens),
                "PIRM_CHALLENGE": str(challenge),
                "PIRM_BASELINE_A": str(baselines[Track.A]),
                "PIRM_BASELINE_B": str(baselines[Track.B]),
                **DEMO_TIMING,
            },
        )
        _say(f"Starting inference, metrics and scorer (logs in {state / 'logs'}) ...")
        started = time.monotonic()
        try:
            cluster.start(say=_say)
        except StartFailed as error:
            raise SystemExit(f"pirm demo: {error}") from None
        try:
            return _evaluate(cluster, models, started, as_json)
        finally:
            cluster.stop()


def _evaluate(cluster: LocalCluster, models: dict[Team, Path], started: float,
              as_json: bool) -> int:
    from services.cli.progress import follow_jobs
    from services.report.tables import export_table

    scorer = cluster.target("scorer")
    job_ids = []
    for team, model in models.items():
        with ScorerClient(scorer, token=cluster.token(Role.TEAM, team.name)) as client:
            job = client.submit(team.track, model, phase_name=PHASE, model_name=model.name)
        _say(f"Track {team.track.value}: team {team.name} submitted {model.name} (job "
             f"{job.job_id})")
        job_ids.append(job.job_id)
    boards: dict[str, list[dict[str, Any]]] = {}
    tables: dict[str, str] = {}
    with ScorerClient(scorer, token=cluster.token()) as organiser:
        baseline_jobs = [j.job_id for j in organiser.jobs() if j.baseline]
        _say(f"Evaluating {len(job_ids)} team submissions and {len(baseline_jobs)} baseline "
             "rows ...")
        summaries = follow_jobs(organiser, baseline_jobs + job_ids)
        for s in summaries:
            if s["state"] != "SUCCEEDED":
                _say(f"  job {s['job_id']} ({s['team']}): {s['state']}: {s.get('error', '')}")
        for track in Track:
            rows = leaderboard_rows(organiser.leaderboard(track, by="a", phase_name=PHASE))
            boards[track.value] = rows
            tables[track.value] = export_table(rows, final=False, by="a", form="md")
            _say("\n" + leaderboard_table(track.value, "a", rows))
    for name, table in tables.items():
        _say(f"\nTrack {name}, `pirm export --track {name} --phase {PHASE} --format md`:\n")
        _say(table.rstrip())
    _say(f"\nDone in {time.monotonic() - started:.0f} s.")
    if as_json:
        print_json({"jobs": summaries, "leaderboards": boards, "tables": tables})
    return 1 if any(s["state"] != "SUCCEEDED" for s in summaries) else 0
