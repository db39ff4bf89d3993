"""`pirm freeze`: the challenge's reference models (SPEC.md section 8) as frozen `.pb` graphs,
built from their checkpoints and each checked against the network run from its checkpoint."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from services.cli.output import print_json, say, say_aside
from services.reference.networks import REFERENCES  # plain records: no TensorFlow here

NAMES = tuple(REFERENCES)


def register(commands: Any) -> None:
    freeze = commands.add_parser(
        "freeze", help="build the reference models' frozen .pb graphs from their checkpoints")
    freeze.add_argument("--models", type=Path,
                        help="the checkpoints' folder (default: models_pretrained in PIRM_DATA "
                             "or ../shared/pirm2018)")
    freeze.add_argument("--out", type=Path, default=Path("var/reference"),
                        help="folder for the .pb files (default: var/reference)")
    freeze.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME",
                        help=f"these references only (of {', '.join(NAMES)})")
    freeze.add_argument("--json", action="store_true")
    freeze.set_defaults(run=freeze_command)


def freeze_command(args: argparse.Namespace) -> int:
    from services.reference.freeze import CHECK_SHAPE, TOLERANCE, freeze_checked
    from services.scorer.samples import challenge_data_dir

    models = args.models
    if models is None:
        data = challenge_data_dir()
        models = data / "models_pretrained" if data is not None else None
    if models is None or not models.is_dir():
        raise SystemExit("pirm freeze: no checkpoints folder found: give --models "
                         "(the challenge's models_pretrained) or set PIRM_DATA")
    _, height, width, _ = CHECK_SHAPE
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in args.only or NAMES:
        started = time.monotonic()
        frozen = freeze_checked(REFERENCES[name], models)
        path = args.out / f"{name}.pb"
        path.write_bytes(frozen.graph_def)
        written.append({"name": name, "track": REFERENCES[name].track, "path": str(path),
                        "bytes": len(frozen.graph_def), "max_abs_error": frozen.max_error,
                        "tolerance": TOLERANCE, "seconds": time.monotonic() - started})
        (say_aside if args.json else say)(
            f"{name} (track {REFERENCES[name].track}): {path}, "
            f"{len(frozen.graph_def) / 1e6:.2f} MB; max |frozen - checkpoint| = "
            f"{frozen.max_error:.2e} on a random {width}x{height} image (tolerance "
            f"{TOLERANCE:g})")
    if args.json:
        print_json(written)
    return 0
