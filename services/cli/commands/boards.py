"""`pirm leaderboard` (a track's board, from the scorer) and `pirm score` (the formula behind
it, SPEC section 3, computed here)."""

from __future__ import annotations

import argparse
from typing import Any

from services.cli.flags import add_scorer_flags, add_track, scorer_client
from services.cli.output import leaderboard_table, print_json
from services.client import leaderboard_rows
from services.core.track import Phase, Track
from services.scorer.scoring import ScoreInputs, compute_scores


def register(commands: Any) -> None:
    board = commands.add_parser("leaderboard", help="a track's leaderboard")
    add_track(board)
    board.add_argument("--by", choices=["a", "b", "c"], default="a")
    board.add_argument("--phase", choices=[p.value for p in Phase], default="validation")
    board.add_argument("--policy", choices=["best", "latest"], default="best",
                       help="which of a team's results stands for it")
    add_scorer_flags(board)
    board.set_defaults(run=leaderboard_command)

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


def leaderboard_command(args: argparse.Namespace) -> int:
    with scorer_client(args) as client:
        rows = leaderboard_rows(client.leaderboard(args.track, by=args.by, phase=args.phase,
                                                   policy=args.policy))
    print_json(rows) if args.json else print(leaderboard_table(args.track, args.by, rows))
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
