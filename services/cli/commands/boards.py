"""`pirm leaderboard` (a track's board, from the scorer), `pirm export` (the track's table as
the challenge published it: CSV, Markdown or LaTeX) and `pirm score` (the formula behind it,
SPEC section 3, computed here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pirm.v1 import common_pb2, scorer_pb2

from services.cli.flags import add_scorer_flags, add_track, scorer_client
from services.cli.output import leaderboard_table, print_json, say_aside
from services.client import ScorerClient, leaderboard_rows
from services.core.track import Phase, Track
from services.scorer.scoring import ScoreInputs, compute_scores


def register(commands: Any) -> None:
    board = commands.add_parser("leaderboard", help="a track's leaderboard")
    add_track(board)
    board.add_argument("--by", choices=["a", "b", "c"], default="a")
    add_phase(board)
    board.add_argument("--policy", choices=["best", "latest"],
                       help="which of a team's results stands for it (default: the phase's "
                            "rule; without a challenge, its best)")
    add_scorer_flags(board)
    board.set_defaults(run=leaderboard_command)

    export = commands.add_parser(
        "export", help="write a track's table as the challenge published it (CSV, Markdown, "
                       "LaTeX)")
    add_track(export)
    add_phase(export)
    export.add_argument("--format", choices=["csv", "md", "latex"], default="md", dest="form")
    export.add_argument("--score", choices=["a", "b", "c"], default="a", type=str.lower,
                        help="the score the rows are sorted by")
    export.add_argument("-o", "--output", type=Path, help="write it here (default: stdout)")
    add_scorer_flags(export)
    export.set_defaults(run=export_command)

    score = commands.add_parser("score", help="the scoring formula alone (SPEC section 3)")
    add_track(score)
    score.add_argument("--psnr", type=float, required=True)
    quality = score.add_mutually_exclusive_group(required=True)
    quality.add_argument("--msssim", type=float, help="validation phase")
    quality.add_argument("--mos", type=float, help="final phase")
    score.add_argument("--mos-ref", type=float)
    score.add_argument("--kappa", type=float, default=0.0719)
    score.add_argument("--runtime-ms", type=float, required=True)
    score.add_argument("--baseline-runtime-ms", type=float, required=True)
    score.add_argument("--json", action="store_true")
    score.set_defaults(run=score_command)


def add_phase(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phase", default="validation",
                        help="the phase's name (pirm challenge lists them; without a challenge: "
                             "validation or final)")


def phase_board(client: ScorerClient, args: argparse.Namespace, by: str
                ) -> scorer_pb2.LeaderboardResponse:
    """The board of the phase named on the command line (a challenge's phase by name; its
    scoring comes from the challenge)."""
    scoring = args.phase if args.phase in set(Phase) else Phase.VALIDATION
    return client.leaderboard(args.track, by=by, phase=scoring, phase_name=args.phase,
                              policy=getattr(args, "policy", None))


def leaderboard_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        board = phase_board(client, args, args.by)
    rows = leaderboard_rows(board)
    if args.json:
        print_json(rows)
        return 0
    print(leaderboard_table(args.track, args.by, rows))
    if board.hidden:
        print("(hidden from teams until published: pirm publish)")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from services.report.tables import export_table, ordered

    with scorer_client(args) as client:
        board = phase_board(client, args, args.score)
    final = board.phase == common_pb2.PHASE_FINAL
    if args.json:  # the figures behind the table, in its order
        print_json(ordered(leaderboard_rows(board), args.score))
        return 0
    text = export_table(leaderboard_rows(board), final, args.score, args.form)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        say_aside(f"track {args.track}'s {args.phase} table ({len(board.entries)} rows) "
                  f"written to {args.output}")
    return 0


def score_command(args: argparse.Namespace) -> int:
    phase = Phase.FINAL if args.mos is not None else Phase.VALIDATION
    inputs = ScoreInputs(
        track=Track(args.track), phase=phase, psnr=args.psnr,
        msssim=args.msssim if args.msssim is not None else float("nan"),
        runtime_ms=args.runtime_ms, baseline_runtime_ms=args.baseline_runtime_ms,
        mos=args.mos, kappa=args.kappa, mos_ref=args.mos_ref,
    )
    scores = compute_scores(inputs)
    result = {"track": args.track, "phase": phase.value, "score_a": scores.score_a,
              "score_b": scores.score_b, "score_c": scores.score_c}
    if args.json:
        print_json(result)
    else:
        print(f"score A {scores.score_a:.4f}   score B {scores.score_b:.4f}   "
              f"score C {scores.score_c:.4f}")
    return 0
