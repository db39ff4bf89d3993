"""make bench-inference: our runtime measurement of the real SRCNN baseline on an HD image next
to a plain in-process TensorFlow loop timed the same way, in the same run, three times.

Goal (issue 3): ours within 3% of the plain loop, and our three repetitions within 3% of each
other. The plain loop is written out here on purpose, independent of services/inference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from services.cli.commands.bench import timing_images  # noqa: E402
from services.core.timing import TimingOptions  # noqa: E402
from services.core.track import Track  # noqa: E402
from services.inference.engine import Engine, EngineSettings  # noqa: E402
from services.scorer.samples import challenge_data_dir, srcnn_graph_def  # noqa: E402


def plain_tensorflow_loop(pb: bytes, image: np.ndarray, options: TimingOptions,
                          threads: int) -> list[float]:
    """What a careful engineer would write: one session, warm-up, perf_counter around run."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(pb)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                      inter_op_parallelism_threads=1)
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        for _ in range(options.warmup_runs):
            session.run("output:0", {"input:0": image})
        samples: list[float] = []
        while len(samples) < options.min_runs or sum(samples) < options.min_seconds * 1000:
            start = time.perf_counter()
            session.run("output:0", {"input:0": image})
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="default: the challenge's div2k_srcnn.pb")
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    data = challenge_data_dir()
    model = args.model or (data / "models_pretrained" / "div2k_srcnn.pb" if data else None)
    pb = model.read_bytes() if model else srcnn_graph_def()
    (image,) = timing_images(None, Track.A, 1)
    options = TimingOptions()
    threads = os.cpu_count() or 1
    print(f"model: {model or 'generated SRCNN-shaped graph'}; input {image.shape}; "
          f"{threads} intra-op threads; warm-up {options.warmup_runs}+, >= {options.min_runs} "
          f"runs and >= {options.min_seconds} s per measurement")
    engine = Engine(EngineSettings(intra_op_threads=threads, inter_op_threads=1))
    ours_medians, plain_medians = [], []
    try:
        engine.load("srcnn", pb)
        print(f"{'rep':>3}  {'ours median ms':>14}  {'ours 95% CI':>17}  {'plain median ms':>15}  "
              f"{'ours/plain':>10}")
        for rep in range(1, args.repetitions + 1):
            ours = engine.benchmark("srcnn", image, options).timing
            plain = plain_tensorflow_loop(pb, image, options, threads)
            plain_median = statistics.median(plain)
            ours_medians.append(ours.median_ms)
            plain_medians.append(plain_median)
            print(f"{rep:>3}  {ours.median_ms:>14.1f}  [{ours.ci95_low_ms:>7.1f}, "
                  f"{ours.ci95_high_ms:>7.1f}]  {plain_median:>15.1f}  "
                  f"{ours.median_ms / plain_median:>10.3f}")
    finally:
        engine.close()
    spread = (max(ours_medians) - min(ours_medians)) / statistics.fmean(ours_medians)
    ratio = statistics.fmean(ours_medians) / statistics.fmean(plain_medians)
    print(f"ours vs plain loop: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%; goal within 3%)")
    print(f"spread of our {len(ours_medians)} medians: {spread * 100:.1f}% (goal within 3%)")


if __name__ == "__main__":
    main()
