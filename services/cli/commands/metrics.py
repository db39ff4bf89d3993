"""`pirm metrics`: a track's PSNR and MS-SSIM of one (output, target) pair, computed here with
the metrics service's own code and the scorer's protocol."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from services.cli.flags import add_track
from services.cli.output import print_json
from services.client import json_number
from services.core.track import Track


def register(commands: Any) -> None:
    metrics = commands.add_parser("metrics", help="a track's metrics of one (output, target)")
    add_track(metrics)
    metrics.add_argument("output", type=Path, help=".npy float32 HxWx3 or an 8-bit image")
    metrics.add_argument("target", type=Path, help="an 8-bit image")
    metrics.add_argument("--json", action="store_true")
    metrics.set_defaults(run=metrics_command)


def metrics_command(args: argparse.Namespace) -> int:
    import numpy as np

    from services.metrics.quality import evaluate_pair
    from services.scorer.protocol import QUALITY_OPTIONS, crop_to_scale, read_rgb

    track = Track(args.track)
    target = read_rgb(args.target)
    if args.output.suffix == ".npy":
        output = np.load(args.output, allow_pickle=False).astype(np.float32)
    else:
        output = read_rgb(args.output).astype(np.float32) / np.float32(255.0)
    if track is Track.A:
        target = crop_to_scale(target)  # the model saw the target cropped to multiples of 4
    quality = evaluate_pair(output, target.astype(np.float32) / np.float32(255.0),
                            QUALITY_OPTIONS[track])
    if args.json:
        print_json({"track": args.track, "psnr": json_number(quality.psnr),
                    "msssim": json_number(quality.msssim)})
    else:
        print(f"PSNR {quality.psnr:.4f} dB   MS-SSIM {quality.msssim:.6f}")
    return 0
