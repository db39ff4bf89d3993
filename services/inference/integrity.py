"""Is the timing input special to the model? A check run after every timing of a submission.

Runtime is measured on one HD input, quality on other images. A graph without control flow
(graphs.py refuses loops and conditionals) still can make its work depend on its input: shape
ops, comparisons, select and slice can size its tensors from what it sees, so that it
recognises the timing input (by its shape or its pixels) and does almost nothing there. An
honest network's cost depends on the size of its input only, and its output on a pixel depends
on that pixel's neighbourhood only. So the model is also run on probes the timer never sees:

- the same pixels without their top SHIFT_PX rows and left SHIFT_PX columns (another shape;
  every pixel moved);
- another image of the same size, and one of a quarter of the size (from the job's quality
  images, which the scorer sends; without them, the timing input turned upside down);

and the timing is not trusted when

- a probe's cost predicts a cost for the timing input SUSPICIOUS times the timed one or more
  (affine in pixels: a fixed per-run cost, measured on a tiny image, plus a cost per pixel),
  still so over alternated runs of the timing input and that probe (CONFIRM_*), and the
  predicted cost would change the score (above a quarter of the baseline's: SPEED_TERM_CAP);
  or
- the output on the timing input differs, away from the borders, from the output on the same
  pixels shifted: by less than CONSISTENT_DB of PSNR and by a good part of what the model
  changes in the image itself.

Every output looked at must also be finite and of its input's shape. Fully convolutional
networks pass exactly (identical outputs); instance normalisation, whose statistics the border
changes a little, gives about 66 dB (the challenge's ResNets).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from services.core.errors import InvalidArgument
from services.core.timing import TimingCheck, TimingProbe

# A multiple of the downsampling factors of common networks (U-Nets pool by up to 32): the
# shifted probe then sees the same pooling grid. Every probe is at most the timing input's size:
# a larger one would also pay for memory the allocator has not yet reused (measured: a 5 ms
# point-wise model took 16 ms on the input with a 32-px border, over alternated runs).
SHIFT_PX = 32
INTERIOR_PX = 48  # beyond the receptive field of the reference networks (VDSR: 20 px)
SUSPICIOUS = 1.5
# Alternated runs that confirm a suspicion: at least 3, more for a fast model (up to 25, about
# a second in all), whose runs a burst of other work on the node can skew.
CONFIRM_ROUNDS = 3
CONFIRM_ROUNDS_MAX = 25
CONFIRM_S = 1.0
MATERIAL_MS = 5.0  # differences below a few ms are the OS's jitter, and worth nothing
# SPEC.md section 3: the speed term is min(4, T_base / T). A model whose probes predict a cost
# below T_base / 4 gets the whole term whatever its timing says, so nothing is judged there:
# that is where a fast model's fixed costs per run (thread dispatch, allocation), which the
# probes' scaling to the timing input's size does not capture, would make noise.
SPEED_TERM_CAP = 4.0
CONSISTENT_DB = 40.0
OWN_CHANGE_MARGIN_DB = 10.0
TINY_PX = 16
TINY_RUNS = 3

Run = Callable[[np.ndarray], np.ndarray]


def checked_output(output: np.ndarray, model_input: np.ndarray, what: str) -> np.ndarray:
    """The output, if it has the input's shape and only finite values."""
    if output.shape != model_input.shape:
        raise InvalidArgument(
            f"the model returned shape {output.shape} on {what} of shape {model_input.shape}; "
            "the output must have the input's shape")
    finite = np.isfinite(output)
    if not finite.all():
        y, x = (int(i) for i in np.argwhere(~finite.reshape(output.shape[1:3] + (-1,)))[0][:2])
        raise InvalidArgument(
            f"the model's output on {what} has NaN or infinite values (first at pixel ({y}, "
            f"{x})); outputs must be finite")
    return output


def _timed(run: Run, image: np.ndarray, what: str) -> tuple[float, np.ndarray]:
    start = time.perf_counter_ns()
    output = run(image)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    return elapsed, checked_output(output, image, what)


def shifted(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, SHIFT_PX:, SHIFT_PX:])


def fallback_probes(timed: np.ndarray) -> list[np.ndarray]:
    """Without images from the caller: the timing input upside down, whole and a quarter."""
    turned = timed[:, ::-1, ::-1]
    return [np.ascontiguousarray(turned), np.ascontiguousarray(turned[:, ::2, ::2])]


def _pixels(image: np.ndarray) -> int:
    return int(image.shape[1] * image.shape[2])


def _describe(image: np.ndarray, timed: np.ndarray) -> str:
    if image.shape == timed.shape:
        return "another image of the same size"
    return f"another image of {image.shape[2]}x{image.shape[1]} px"


def check_timing_input(run: Run, timed: np.ndarray, timed_output: np.ndarray,
                       timed_ms: float, others: Sequence[np.ndarray] = (),
                       baseline_ms: float = 0.0) -> TimingCheck:
    """Runs the probes and judges the timing (see the module's docstring). `timed_output` is
    the model's output on `timed` from the timing, `timed_ms` its median there; `baseline_ms`
    the baseline's median beside it, when timed (0: unknown)."""
    floor_ms = baseline_ms / SPEED_TERM_CAP
    checked_output(timed_output, timed, "the timing input")
    others = list(others) or fallback_probes(timed)
    probes = [(f"the same pixels shifted by {SHIFT_PX} px", shifted(timed)),
              *((_describe(other, timed), other) for other in others)]
    tiny = others[-1][:, :TINY_PX, :TINY_PX]
    fixed_ms = statistics.median(_timed(run, tiny, "a tiny image")[0] for _ in range(TINY_RUNS))
    results: list[TimingProbe] = []
    failure = ""
    shifted_output = None
    for name, image in probes:
        probe_ms, output = _timed(run, image, name)
        if shifted_output is None:
            shifted_output = output
        expected = _expected_ms(probe_ms, fixed_ms, _pixels(timed) / _pixels(image))
        observed_ms = timed_ms
        if _suspicious(timed_ms, expected, floor_ms):
            # One run can be unlucky: alternate the two a few times and compare medians.
            rounds = int(min(CONFIRM_ROUNDS_MAX,
                             max(CONFIRM_ROUNDS, CONFIRM_S * 1000 / (timed_ms + probe_ms))))
            pairs = [(_timed(run, timed, "the timing input")[0], _timed(run, image, name)[0])
                     for _ in range(rounds)]
            observed_ms = statistics.median(t for t, _ in pairs)
            probe_ms = statistics.median(p for _, p in pairs)
            expected = _expected_ms(probe_ms, fixed_ms, _pixels(timed) / _pixels(image))
            if _suspicious(observed_ms, expected, floor_ms) and not failure:
                failure = (
                    f"the model ran {expected / observed_ms:.1f}x faster on the timing input "
                    f"({observed_ms:.1f} ms) than its run on {name} predicts ({probe_ms:.1f} "
                    f"ms there, so {expected:.1f} ms for the timing input): it appears to "
                    "recognise the timing input and skip work there, so its timing cannot be "
                    "trusted")
        results.append(TimingProbe(name, tuple(image.shape), probe_ms, expected))
    assert shifted_output is not None
    consistency, own_change = _consistency_db(timed, timed_output, shifted_output)
    if (not failure and consistency < CONSISTENT_DB
            and consistency < own_change + OWN_CHANGE_MARGIN_DB):
        failure = (
            f"the model's output on the timing input differs from its output on the same "
            f"pixels shifted by {SHIFT_PX} px (PSNR {consistency:.1f} dB between the two, away "
            f"from the borders; the model itself changes the image by {own_change:.1f} dB): "
            "a network computes the same pixels from the same neighbourhood, so it appears to "
            "recognise the timing input, and its timing cannot be trusted")
    return TimingCheck(True, failure, timed_ms, tuple(results), consistency)


def _expected_ms(probe_ms: float, fixed_ms: float, scale: float) -> float:
    """A cost affine in the pixels: the fixed part measured on a tiny image (at most the
    probe's whole cost), the rest scaled by the pixel count."""
    fixed = min(fixed_ms, probe_ms)
    return fixed + (probe_ms - fixed) * scale


def _suspicious(observed_ms: float, expected_ms: float, floor_ms: float) -> bool:
    return (expected_ms > SUSPICIOUS * observed_ms
            and expected_ms - observed_ms > MATERIAL_MS and expected_ms > floor_ms)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64))))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _consistency_db(timed: np.ndarray, timed_output: np.ndarray,
                    shifted_output: np.ndarray) -> tuple[float, float]:
    """(PSNR between the two outputs, PSNR between the output and its input), on the interior
    pixels, values clipped to [0, 1] as the metrics see them."""
    m, s = INTERIOR_PX, SHIFT_PX
    height, width = timed.shape[1:3]
    if height <= s + 2 * m or width <= s + 2 * m:
        m = 0
    window = (0, slice(s + m, height - m), slice(s + m, width - m))
    ours = np.clip(timed_output[window], 0, 1)
    theirs = np.clip(shifted_output[0, m:height - s - m, m:width - s - m], 0, 1)
    model_input = timed[window]
    if model_input.dtype == np.uint8:
        model_input = model_input.astype(np.float32) / np.float32(255)
    return _psnr(ours, theirs), _psnr(ours, np.clip(model_input, 0, 1))
