"""`pirm inspect`: what a frozen graph is and costs, and whether it would be accepted, before
it is submitted; with --mobile, its LiteRT conversion and runtime beside TensorFlow's.

The model is untrusted: it is inspected and estimated in fresh processes (the CLI process never
imports it into TensorFlow), and the mobile estimate runs only after the allowlist accepted it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.cli.output import print_json, timing_summary
from services.core.errors import InvalidArgument, PirmError
from services.core.timing import TimingOptions
from services.core.track import Track
from services.inference.graphs import DEFAULT_INPUT, DEFAULT_OUTPUT
from services.inference.inspection import Inspection, inspection_dict

if TYPE_CHECKING:
    from services.inference.mobile import MobileEstimate

TRACK_INPUTS = {
    Track.A: "the bicubic x4 round trip of the HD image (the same size)",
    Track.B: "the HD image",
}


def register(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect", help="a frozen graph's ops, parameters, FLOPs, tensors and allowlist verdict "
                        "(--mobile: LiteRT conversion and runtime)")
    add_arguments(inspect)
    inspect.set_defaults(run=inspect_command)


def inspect_command(args: argparse.Namespace) -> int:
    """0 when the service would accept the model (and, with --mobile, LiteRT converted it)."""
    try:
        result = run_inspect(args)
    except PirmError as error:
        print(f"pirm inspect: {error}", file=sys.stderr)
        return 2
    print_json(result) if args.json else print(report_text(result))
    return 0 if result["accepted"] and result.get("mobile", {}).get("converted", True) else 1


# The defaults that come from the inference and scorer modules (NumPy, PIL) are filled in by
# run_inspect, so that building the parser imports neither.
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the frozen graph (.pb)")
    parser.add_argument("--track", choices=["A", "B"], type=str.upper, default="A",
                        help="whose timing input to count FLOPs on (both tracks time on "
                             "1280x720 inputs; default A)")
    parser.add_argument("--size", type=image_size, metavar="WxH",
                        help="image size instead of the challenge's 1280x720 HD timing image")
    parser.add_argument("--input-tensor", default=DEFAULT_INPUT)
    parser.add_argument("--output-tensor", default=DEFAULT_OUTPUT)
    parser.add_argument("--mobile", action="store_true",
                        help="also convert to LiteRT and time it against TensorFlow on this CPU")
    parser.add_argument("--threads", type=int,
                        help="CPU threads of both runtimes for --mobile (default: all cores)")
    parser.add_argument("--runs", type=int,
                        help="--mobile: timed runs at least (after warm-up)")
    parser.add_argument("--warmup-runs", type=int)
    parser.add_argument("--json", action="store_true")


def image_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT like 1280x720, not {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"the size must be positive, not {text!r}")
    return width, height


def run_inspect(args: argparse.Namespace) -> dict[str, Any]:
    """The inspection (and mobile estimate) as JSON-ready data; InvalidArgument when the file
    is missing or no GraphDef."""
    from services.inference.engine import EngineSettings
    from services.inference.mobile import MOBILE_TIMING, MobileRequest, inspect_in_fresh_process
    from services.scorer.protocol import timing_input_shape
    from services.scorer.samples import HD_SIZE

    if not args.model.is_file():
        raise InvalidArgument(f"model file {args.model} does not exist")
    track = Track(args.track)
    shape = timing_input_shape(track, args.size or HD_SIZE)
    mobile = None
    if args.mobile:
        threads = EngineSettings().intra_op_threads if args.threads is None else args.threads
        if threads < 1:
            raise InvalidArgument(f"--threads must be at least 1, not {threads}")
        runs = MOBILE_TIMING.min_runs if args.runs is None else args.runs
        warmup_runs = MOBILE_TIMING.warmup_runs if args.warmup_runs is None else args.warmup_runs
        options = TimingOptions(warmup_runs, runs, MOBILE_TIMING.min_seconds,
                                max(runs, MOBILE_TIMING.max_runs)).validated()
        mobile = MobileRequest(threads, options)
    found, estimate = inspect_in_fresh_process(
        args.model.read_bytes(), shape, (args.input_tensor, args.output_tensor), mobile)
    return inspection_report(str(args.model), track, found, estimate, args.mobile)


def inspection_report(model: str, track: Track, found: Inspection,
                      estimate: MobileEstimate | None, mobile: bool) -> dict[str, Any]:
    result = {"model": model, "track": track.value, "track_input": TRACK_INPUTS[track],
              **inspection_dict(found)}
    if estimate is not None:
        result["mobile"] = mobile_dict(estimate)
    elif mobile:
        result["mobile"] = {"converted": False, "skipped": "the model is refused (see "
                            "refused_ops and problems): it is neither converted nor run"}
    return result


def mobile_dict(estimate: MobileEstimate) -> dict[str, Any]:
    from ai_edge_litert import __version__ as litert_version

    summary: dict[str, Any] = {
        "converted": bool(estimate.litert_bytes), "runtime": f"ai-edge-litert {litert_version}",
        "input_shape": list(estimate.input_shape), "threads": estimate.threads,
        "unsupported_ops": list(estimate.unsupported_ops), "error": estimate.conversion_error,
    }
    if estimate.litert is None or estimate.tensorflow is None:
        return summary
    return {**summary, "litert_bytes": estimate.litert_bytes,
            "litert": timing_summary(estimate.litert),
            "tensorflow": timing_summary(estimate.tensorflow),
            "tensorflow_over_litert": estimate.speed_ratio,
            "tensorflow_over_litert_ci95": list(estimate.ratio_ci95),
            "max_abs_difference": estimate.max_abs_difference}


# -- the human report ----------------------------------------------------------------------


def report_text(r: dict[str, Any]) -> str:
    width, height = r["input_size"]
    lines = [f"{r['model']}: {r['size_bytes']:,} bytes, {r['nodes']} nodes",
             _verdict(r), "",
             f"track {r['track']}: the model's input is {r['track_input']}, "
             f"{width}x{height}",
             f"  input   {r['input']['name']:<16} declared {_shape(r['input']['declared_shape'])}"
             f", inspected as {_shape(r['input']['shape'])}",
             f"  output  {r['output']['name']:<16} {_shape(r['output']['shape'])}",
             f"parameters  {r['parameters']:,} in {r['parameter_tensors']} tensors (layer "
             f"weights and biases; all float constants: {r['constant_values']:,})"]
    if r["flops"] is not None:
        lines.append(f"FLOPs per {width}x{height} image  {r['flops']:,} "
                     f"({r['flops'] / 1e9:.2f} GFLOPs; a multiply-add counts 2)")
    lines += ["", *_op_table(r)]
    for label, key in (("not counted (arithmetic not modelled)", "flops_not_counted_ops"),
                       ("FLOPs unknown (shapes not static)", "flops_unknown_shape_nodes")):
        if r[key]:
            lines.append(f"{label}: {', '.join(r[key])}")
    if "mobile" in r:
        lines += ["", *_mobile_lines(r["mobile"])]
    return "\n".join(lines)


def _verdict(r: dict[str, Any]) -> str:
    if r["accepted"]:
        return "verdict: accepted (op allowlist, tensor names, output shape)"
    lines = ["verdict: REFUSED by the inference service"]
    lines += [f"  {item['op']}: {item['reason']}" for item in r["refused_ops"]]
    lines += [f"  {problem}" for problem in r["problems"]]
    return "\n".join(lines)


def _op_table(r: dict[str, Any]) -> list[str]:
    total = r["flops"] or 0
    header = f"{'op':<24} {'count':>6} {'FLOPs':>18} {'share':>7}"
    lines = [header, "-" * len(header)]
    by_flops = sorted(r["ops"], key=lambda op: (-r["flops_by_op"].get(op, 0), op))
    for op in by_flops:
        flops = r["flops_by_op"].get(op)
        share = f"{100 * flops / total:6.2f}%" if flops and total else ""
        lines.append(f"{op:<24} {r['ops'][op]:>6} "
                     f"{(f'{flops:,}' if flops else '-'):>18} {share:>7}".rstrip())
    return lines


def _mobile_lines(m: dict[str, Any]) -> list[str]:
    if "skipped" in m:
        return [f"mobile (LiteRT): not tried: {m['skipped']}"]
    if not m["converted"]:
        return [f"mobile (LiteRT): conversion FAILED: {m['error']}"]
    lines = [f"mobile estimate: {m['runtime']} interpreter on this CPU (a proxy for a phone), "
             f"converted model {m['litert_bytes']:,} bytes",
             f"  input {_shape(m['input_shape'])}, {m['threads']} threads (TensorFlow: "
             f"{m['threads']} intra-op, 1 inter-op), runs alternated after warm-up",
             f"  {'runtime':<12} {'median ms':>10} {'95% CI':>19} {'min':>9} {'max':>9} "
             f"{'stdev':>8} {'runs':>5}"]
    for label, key in (("LiteRT", "litert"), ("TensorFlow", "tensorflow")):
        t = m[key]
        low, high = t["ci95_ms"]
        lines.append(f"  {label:<12} {t['median_ms']:>10.1f} {f'[{low:.1f}, {high:.1f}]':>19} "
                     f"{t['min_ms']:>9.1f} {t['max_ms']:>9.1f} {t['stdev_ms']:>8.1f} "
                     f"{t['runs']:>5}")
    low, high = m["tensorflow_over_litert_ci95"]
    lines.append(f"  TensorFlow / LiteRT time: {m['tensorflow_over_litert']:.2f} [95% CI "
                 f"{low:.2f}, {high:.2f}]; outputs differ by at most "
                 f"{m['max_abs_difference']:.1e}")
    return lines


def _shape(shape: list[int] | None) -> str:
    return "unknown" if shape is None else "[" + ", ".join(map(str, shape)) + "]"
