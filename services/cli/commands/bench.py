"""`pirm bench`: the inference service's timing protocol run in-process, with the same engine
and worker processes the service uses, on one model and one HD image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.cli.output import print_json, timing_summary
from services.core.timing import TimingOptions
from services.core.track import Track

if TYPE_CHECKING:
    import numpy as np

    from services.core.timing import DeviceTiming


def register(commands: Any) -> None:
    bench = commands.add_parser("bench", help="time a model in-process as the service does")
    add_arguments(bench)
    bench.set_defaults(run=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from services.cli.progress import working

    with working(f"timing {args.model.name} ({args.protocol} protocol)"):
        result = run_bench(args)
    print_json(result) if args.json else print_report(result)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="the frozen graph (.pb)")
    parser.add_argument("--image", type=Path, action="append",
                        help="HD image(s) to time on (default: the data folder's HD_res, else "
                             "a synthetic 1280x720 image)")
    parser.add_argument("--track", choices=["A", "B"], type=str.upper,
                        help="track A times the bicubic x4 input built from the image")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--baseline", type=Path,
                        help="also time this model interleaved with --model, and the speed ratio")
    parser.add_argument("--protocol", choices=["standard", "pirm2018"], default="standard",
                        help="pirm2018: the challenge's 4 images, the last 2 averaged")
    defaults = TimingOptions()
    parser.add_argument("--warmup-runs", type=int, default=defaults.warmup_runs)
    parser.add_argument("--min-runs", type=int, default=defaults.min_runs)
    parser.add_argument("--min-seconds", type=float, default=defaults.min_seconds)
    parser.add_argument("--max-runs", type=int, default=defaults.max_runs)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory probe")
    parser.add_argument("--intra-op-threads", type=int,
                        help="TensorFlow's threads (default: the engine's, all cores)")
    parser.add_argument("--inter-op-threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")


def timing_images(paths: list[Path] | None, track: Track | None, count: int) -> list[np.ndarray]:
    import numpy as np

    from services.scorer.protocol import (
        crop_to_scale,
        downscaled_upscaled,
        read_rgb,
        to_model_input,
    )
    from services.scorer.samples import DATASET_FOLDERS, HD_SIZE, challenge_data_dir

    if not paths:
        data = challenge_data_dir()
        folder = data / DATASET_FOLDERS[track or Track.B] / "HD_res" if data else None
        paths = sorted(folder.glob("*.png"))[:count] if folder and folder.is_dir() else []
    if not paths:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (HD_SIZE[1], HD_SIZE[0], 3), dtype=np.uint8)]
    else:
        images = [read_rgb(p) for p in paths]
    if track is Track.A:
        images = [downscaled_upscaled(crop_to_scale(image)) for image in images]
    while len(images) < count:
        images.append(images[len(images) % len(images)])
    return [to_model_input(image) for image in images[:count]]


def report(measured: DeviceTiming) -> dict[str, Any]:
    return {
        **timing_summary(measured.timing),
        "peak_memory_mb": measured.peak_memory_mb or None,
        "device": measured.device, "intra_op_threads": measured.intra_op_threads,
        "inter_op_threads": measured.inter_op_threads, "node": measured.node,
        "input_shape": list(measured.input_shape),
    }


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from services.inference.engine import Engine, EngineSettings
    from services.inference.timing import PIRM2018_IMAGES

    track = Track(args.track) if args.track else None
    count = PIRM2018_IMAGES if args.protocol == "pirm2018" else 1
    images = timing_images(args.image, track, count)
    options = TimingOptions(args.warmup_runs, args.min_runs, args.min_seconds,
                            args.max_runs).validated()
    threads = args.intra_op_threads
    engine = Engine(EngineSettings(intra_op_threads=EngineSettings().intra_op_threads
                                   if threads is None else threads,
                                   inter_op_threads=args.inter_op_threads,
                                   default_device=args.device))
    try:
        engine.load("model", args.model.read_bytes())
        memory = not args.no_memory
        if args.protocol == "pirm2018":
            result = {"protocol": "pirm2018", **report(engine.benchmark_pirm2018("model", images))}
        elif args.baseline:
            engine.load("baseline", args.baseline.read_bytes())
            comparison = engine.compare("model", "baseline", images[0], options,
                                        measure_memory=memory)
            result = {"protocol": "standard", **report(comparison.solution),
                      "baseline": report(comparison.baseline),
                      "speed_ratio": comparison.speed_ratio,
                      "speed_ratio_ci95": [comparison.ratio_ci95_low, comparison.ratio_ci95_high]}
        else:
            result = {"protocol": "standard",
                      **report(engine.benchmark("model", images[0], options,
                                                measure_memory=memory))}
    finally:
        engine.close()
    return {"model": str(args.model), **result}


def print_report(result: dict[str, Any]) -> None:
    low, high = result["ci95_ms"]
    memory = result["peak_memory_mb"]
    print(f"{result['model']}: median {result['median_ms']:.1f} ms [95% CI {low:.1f}, "
          f"{high:.1f}], p90 {result['p90_ms']:.1f} ms, {result['runs']} runs after "
          f"{result['warmup_runs']} warm-up ({result['protocol']} protocol, {result['device']}, "
          f"{result['intra_op_threads']}/{result['inter_op_threads']} threads)"
          + (f", peak memory {memory:.0f} MiB" if memory else ""))
    if "speed_ratio" in result:
        b = result["baseline"]
        lo, hi = result["speed_ratio_ci95"]
        print(f"baseline: median {b['median_ms']:.1f} ms; speed ratio baseline/model "
              f"{result['speed_ratio']:.3f} [95% CI {lo:.3f}, {hi:.3f}]")
