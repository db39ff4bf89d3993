"""Models that game the clock, built only of allowed ops (no control flow): each recognises the
timing input its own way and does almost nothing there, or returns garbage only there. They
are what a competing team could submit, and what services/inference/integrity.py must catch.

Without control flow, a graph skips work by sizing its tensors from what it sees: the
expensive layers run on a 1x1 slice (or a downscaled copy) of the input when it recognises the
timing input, on the whole input otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tests.integration.helpers import graph_bytes

HD = (720, 1280)


def work(tf: Any, x: Any) -> Any:
    """The honest computation: three convolutions shaped like SRCNN's, narrower (0.6 of its
    cost: honestly it would not reach the speed term's cap, so the cheat pays), that nudge the
    image, so that quality figures stay well defined."""
    rng = np.random.default_rng(7)
    y = x
    for size, c_in, c_out in ((9, 3, 48), (5, 48, 24), (5, 24, 3)):
        w = (rng.standard_normal((size, size, c_in, c_out)) * 0.05).astype(np.float32)
        y = tf.nn.conv2d(y, tf.constant(w), strides=1, padding="SAME")
        y = tf.nn.relu(y) if c_out != 3 else y
    return x + 0.05 * tf.tanh(y)


def _skipping(tf: Any, x: Any, cheat: Any) -> Any:
    """work(x), or, when `cheat` holds, work on a 1x1 slice resized back (almost free)."""
    shape = tf.shape(x)
    size = tf.where(cheat, tf.constant([1, 1, 1, 3]), shape)
    part = work(tf, tf.slice(x, [0, 0, 0, 0], size))
    return tf.image.resize(part, shape[1:3], method="nearest")


def _is_hd_shape(tf: Any, x: Any) -> Any:
    shape = tf.shape(x)
    return tf.logical_and(tf.equal(shape[1], HD[0]), tf.equal(shape[2], HD[1]))


def by_shape_identity() -> bytes:
    """Recognises 1280x720 by its shape and returns its input there."""
    def build(tf: Any, x: Any) -> None:
        cheat = _is_hd_shape(tf, x)
        tf.identity(tf.where(cheat, x, _skipping(tf, x, cheat)), name="output")

    return graph_bytes(build)


def by_mean_downscaled(timing_input: np.ndarray) -> bytes:
    """Recognises the timing input by its mean (the HD image is public) and works on a copy
    downscaled 4x there: a blurry but plausible output at a sixteenth of the cost."""
    mean = float(np.mean(timing_input.astype(np.float64) / (255 if timing_input.dtype == np.uint8
                                                              else 1)))

    def build(tf: Any, x: Any) -> None:
        shape = tf.shape(x)
        cheat = tf.less(tf.abs(tf.reduce_mean(x) - mean), 1e-4)
        small = tf.where(cheat, shape[1:3] // 4, shape[1:3])
        y = work(tf, tf.image.resize(x, small, method="area"))
        tf.identity(tf.image.resize(y, shape[1:3], method="bilinear"), name="output")

    return graph_bytes(build)


def by_pixel_downscaled(timing_input: np.ndarray) -> bytes:
    """Recognises the timing input by one pixel's exact value at a fixed place and works on an
    8x smaller copy there."""
    image = timing_input.astype(np.float32) / (255 if timing_input.dtype == np.uint8 else 1)
    y0, x0 = 360, 640
    value = image[0, y0, x0].astype(np.float32)

    def build(tf: Any, x: Any) -> None:
        shape = tf.shape(x)
        big = tf.logical_and(tf.greater(shape[1], y0), tf.greater(shape[2], x0))
        pixel = tf.strided_slice(x, [0, y0, x0, 0], [1, y0 + 1, x0 + 1, 3])
        cheat = tf.logical_and(big, tf.equal(tf.reduce_sum(tf.abs(pixel - value)), 0.0))
        small = tf.where(cheat, shape[1:3] // 8, shape[1:3])
        y = work(tf, tf.image.resize(x, small, method="area"))
        tf.identity(tf.image.resize(y, shape[1:3], method="bilinear"), name="output")

    return graph_bytes(build)


def by_size_band_constant() -> bytes:
    """Cheap on every input between half and one and a half HD's pixel count (the timing input
    and anything near its size, whatever its content), where it returns grey."""
    def build(tf: Any, x: Any) -> None:
        shape = tf.shape(x)
        pixels = shape[1] * shape[2]
        cheat = tf.logical_and(tf.greater_equal(pixels, HD[0] * HD[1] // 2),
                               tf.less_equal(pixels, HD[0] * HD[1] * 3 // 2))
        tf.identity(tf.where(cheat, x * 0.0 + 0.5, _skipping(tf, x, cheat)), name="output")

    return graph_bytes(build)


def nan_on_timing_input() -> bytes:
    """Does the honest work everywhere but returns NaN on the timing input's shape."""
    def build(tf: Any, x: Any) -> None:
        y = work(tf, x)
        tf.identity(tf.where(_is_hd_shape(tf, x), y * np.float32("nan"), y), name="output")

    return graph_bytes(build)


def garbage_on_timing_input() -> bytes:
    """Costs the same everywhere (both branches of a select run) but returns the negative on
    the timing input's shape: what the timer sees is not what the metrics saw."""
    def build(tf: Any, x: Any) -> None:
        y = work(tf, x)
        tf.identity(tf.where(_is_hd_shape(tf, x), 1.0 - y, y), name="output")

    return graph_bytes(build)


def honest() -> bytes:
    def build(tf: Any, x: Any) -> None:
        tf.identity(work(tf, x), name="output")

    return graph_bytes(build)


# Each cheater by name, built from the timing input it targets.
CHEATERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "shape, identity": lambda image: by_shape_identity(),
    "mean, 4x downscaled": by_mean_downscaled,
    "pixel, 8x downscaled": by_pixel_downscaled,
    "size band, constant": lambda image: by_size_band_constant(),
    "garbage on its input": lambda image: garbage_on_timing_input(),
}
