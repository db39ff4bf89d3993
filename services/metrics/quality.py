"""PSNR, SSIM and MS-SSIM as the challenge defines them (SPEC.md section 2), evaluated exactly:
every filter, product and mean in float64, by the compiled kernels of kernels.py.

TensorFlow computes these in float32 and biases MS-SSIM by up to 5e-4 on DIV2K-sized images, so
the default figures are the definitions themselves; `tf_compat=True` returns what TensorFlow's
own ops return, for reproducing numbers made with the official scripts.

Two MS-SSIM flavours exist:
- `tf`: tf.image.ssim_multiscale. Per channel, 11x11 Gaussian 'valid' filter, negative terms
  clamped at 0, both sides >= 161 px so that the fifth scale still holds the filter.
- `numpy`: MultiScaleSSIM of the TensorFlow compression models. Channels pooled, the window
  shrinks to the image at coarse scales (with its sigma), no clamping (a negative contrast
  term gives NaN).
Both downsample between scales by a 2x2 mean, repeating the last row/column of an odd side.
Each flavour's two habits can be changed per request: `negative` (relu | nan | error) and
`small` (error | shrink_window).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.core.errors import InvalidArgument
from services.core.quality import (
    Channel,
    Flavor,
    NegativePolicy,
    PairQuality,
    QualityOptions,
    SmallPolicy,
)
from services.metrics import kernels, telemetry

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
FILTER_SIZE = 11
FILTER_SIGMA = 1.5
K1 = 0.01
K2 = 0.03
# BT.601 luma of [0, 1] RGB, scaled like MATLAB's rgb2ycbcr (what SR papers report).
LUMA_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
LUMA_OFFSET = 16.0 / 255.0
# Valid-area pixels below which one band in the calling thread beats spreading over threads.
PARALLEL_MIN_PIXELS = 128 * 128
# Rows of the full scale per piece of work that the two threads share (about 1 ms each on
# an HD pair: small enough to balance them, large enough that taking one costs nothing).
FULL_SCALE_CHUNK_ROWS = 32
_THREADS = os.cpu_count() or 1
_POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="ssim-band")
# Pairs of a batch run concurrently on their own pool (a pair may use _POOL for its bands).
_BATCH_POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="ssim-pair")


DEFAULTS = {
    Flavor.TF: (NegativePolicy.RELU, SmallPolicy.ERROR),
    Flavor.NUMPY: (NegativePolicy.NAN, SmallPolicy.SHRINK_WINDOW),
}


def psnr(output: np.ndarray, target: np.ndarray, max_val: float = 1.0,
         channel: Channel | str = Channel.RGB, tf_compat: bool = False) -> float:
    """tf.image.psnr's definition: MSE over all pixels and channels; +inf for identical images."""
    a, b = _prepared(output, target, Channel(channel))
    return _checked(_psnr(a, b, max_val, tf_compat), a, b)


def _psnr(a: np.ndarray, b: np.ndarray, max_val: float, tf_compat: bool) -> float:
    if tf_compat:
        return _tf_metric("psnr", a, b, max_val)
    mse = kernels.squared_error_sum(a, b) / a.size
    if mse == 0.0:
        return math.inf
    return 20.0 * math.log10(max_val) - 10.0 * math.log10(mse)


def ms_ssim(
    output: np.ndarray,
    target: np.ndarray,
    flavor: Flavor | str = Flavor.TF,
    max_val: float = 1.0,
    channel: Channel | str = Channel.RGB,
    negative: NegativePolicy | str | None = None,
    small: SmallPolicy | str | None = None,
    tf_compat: bool = False,
) -> float:
    """Multi-scale SSIM of two HxWxC images with the challenge's five weights."""
    a, b = _prepared(output, target, Channel(channel))
    return _checked(_ms_ssim(a, b, Flavor(flavor), max_val, negative, small, tf_compat), a, b)


def _ms_ssim(a: np.ndarray, b: np.ndarray, flavor: Flavor, max_val: float,
             negative: NegativePolicy | str | None, small: SmallPolicy | str | None,
             tf_compat: bool) -> float:
    negative_policy = NegativePolicy(negative or DEFAULTS[flavor][0])
    small_policy = SmallPolicy(small or DEFAULTS[flavor][1])
    if tf_compat:
        _require_tf_flavor(flavor)
        return _tf_metric("ssim_multiscale", a, b, max_val)
    stacked = _pyramid(a, b, flavor, max_val, small_policy)  # scales x (channels | 1)
    if negative_policy is NegativePolicy.ERROR and (stacked < 0).any():
        raise InvalidArgument(
            "a contrast-structure term of MS-SSIM is negative (the images are anti-correlated "
            "at some scale); use negative=relu (TensorFlow) or nan (the NumPy code)"
        )
    if negative_policy is NegativePolicy.RELU:
        stacked = np.maximum(stacked, 0.0)
    weights = np.array(MSSSIM_WEIGHTS)[:, np.newaxis]
    with np.errstate(invalid="ignore"):  # a negative term gives NaN, as in the official code
        per_channel = np.prod(stacked**weights, axis=0)
    return float(np.mean(per_channel))


def ssim(
    output: np.ndarray,
    target: np.ndarray,
    flavor: Flavor | str = Flavor.TF,
    max_val: float = 1.0,
    channel: Channel | str = Channel.RGB,
    small: SmallPolicy | str | None = None,
    tf_compat: bool = False,
) -> float:
    """Single-scale SSIM: the mean of luminance * contrast-structure at full resolution."""
    a, b = _prepared(output, target, Channel(channel))
    return _checked(_ssim(a, b, Flavor(flavor), max_val, small, tf_compat), a, b)


def _ssim(a: np.ndarray, b: np.ndarray, flavor: Flavor, max_val: float,
          small: SmallPolicy | str | None, tf_compat: bool) -> float:
    if tf_compat:
        _require_tf_flavor(flavor)
        return _tf_metric("ssim", a, b, max_val)
    value, _ = _scale_terms(a, b, flavor, max_val, SmallPolicy(small or DEFAULTS[flavor][1]), 0)
    return float(np.mean(value))


def _window(rows: int, cols: int, small: SmallPolicy, scale: int) -> np.ndarray:
    """The 11-tap window, or the NumPy code's window shrunk to a small image (with its sigma)
    where the policy allows it."""
    side = min(rows, cols)
    if side >= FILTER_SIZE:
        return _FULL_WINDOW
    if small is SmallPolicy.ERROR:
        smallest = (FILTER_SIZE - 1) * 2 ** (len(MSSSIM_WEIGHTS) - 1) + 1
        raise InvalidArgument(
            f"MS-SSIM needs both image sides >= {smallest} px so that all five scales hold an "
            f"{FILTER_SIZE}x{FILTER_SIZE} filter; scale {scale} is {rows}x{cols}. "
            "Use small=shrink_window (as the NumPy code does) for small images."
        )
    return kernels.gaussian_window(side, side * FILTER_SIGMA / FILTER_SIZE)


_FULL_WINDOW = kernels.gaussian_window(FILTER_SIZE, FILTER_SIGMA)


def _pyramid(a: np.ndarray, b: np.ndarray, flavor: Flavor, max_val: float,
             small: SmallPolicy) -> np.ndarray:
    """Per scale: the contrast-structure terms, and at the last scale the SSIM terms."""
    levels = len(MSSSIM_WEIGHTS)
    rows, cols = a.shape[0], a.shape[1]
    for scale in range(levels):
        _window(rows, cols, small, scale)  # refuses a small scale unless it may shrink
        rows, cols = (rows + 1) // 2, (cols + 1) // 2
    if (a.shape[0] - FILTER_SIZE + 1) * (a.shape[1] - FILTER_SIZE + 1) < PARALLEL_MIN_PIXELS:
        # Small images: every scale in one compiled call.
        out = np.empty((levels, a.shape[2], 2))
        kernels.pyramid_terms(a, b, levels, FILTER_SIZE, FILTER_SIGMA, (K1 * max_val) ** 2,
                              (K2 * max_val) ** 2, out)
        if flavor is Flavor.NUMPY:
            out = out.mean(axis=1, keepdims=True)
        terms = [out[scale, :, 1] for scale in range(levels - 1)] + [out[levels - 1, :, 0]]
        return np.array(terms)
    sums, counts = _pyramid_sums(a, b, small, (K1 * max_val) ** 2, (K2 * max_val) ** 2)
    if flavor is Flavor.NUMPY:
        sums = sums.sum(axis=1, keepdims=True) / a.shape[2]
    means = sums / counts[:, np.newaxis, np.newaxis]  # scales x (channels | 1) x (ssim, cs)
    return np.concatenate([means[:-1, :, 1], means[-1:, :, 0]])


def _pyramid_sums(a: np.ndarray, b: np.ndarray, small: SmallPolicy, c1: float,
                  c2: float) -> tuple[np.ndarray, np.ndarray]:
    """Per scale and channel, the sums of SSIM and of contrast-structure over the 'valid' area,
    and each scale's area.

    One hand-off between two threads for the whole pyramid instead of two per scale (bands of
    every scale, then of every downsampling): on a busy machine each hand-off waits for the
    scheduler. A helper thread downsamples and measures the coarse scales (a quarter of the
    work), then joins the calling thread on the full scale, whose rows both take in chunks from
    a shared queue, so that neither waits for the other when one of them is descheduled."""
    levels = len(MSSSIM_WEIGHTS)
    sums = np.zeros((levels, a.shape[2], 2))
    counts = np.zeros(levels)
    window = _window(a.shape[0], a.shape[1], small, 0)
    rows = a.shape[0] - len(window) + 1
    counts[0] = rows * (a.shape[1] - len(window) + 1)
    chunks = iter(range(0, rows, FULL_SCALE_CHUNK_ROWS))
    lock = threading.Lock()

    def full_scale(out: np.ndarray) -> None:
        while True:
            with lock:  # an iterator is not thread-safe
                r0 = next(chunks, None)
            if r0 is None:
                return
            kernels.ssim_band(a, b, window, c1, c2, r0, min(r0 + FULL_SCALE_CHUNK_ROWS, rows),
                              out, False)

    helper_sums = np.zeros((a.shape[2], 2))

    def coarse_then_full_scale() -> None:
        x, y = a, b
        for scale in range(1, levels):
            x, y = kernels.downsample(x), kernels.downsample(y)
            coarse_window = _window(x.shape[0], x.shape[1], small, scale)
            n = len(coarse_window)
            counts[scale] = (x.shape[0] - n + 1) * (x.shape[1] - n + 1)
            kernels.ssim_band(x, y, coarse_window, c1, c2, 0, x.shape[0] - n + 1, sums[scale],
                              scale == levels - 1)  # luminance: at the last scale only
        full_scale(helper_sums)

    if _THREADS == 1:
        coarse_then_full_scale()
    else:
        helper = _POOL.submit(coarse_then_full_scale)
        full_scale(sums[0])
        helper.result()
    sums[0] += helper_sums
    return sums, counts


def _scale_terms(
    a: np.ndarray, b: np.ndarray, flavor: Flavor, max_val: float, small: SmallPolicy, scale: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean contrast-structure over the 'valid' area: per channel for the tf
    flavour, pooled over channels (a 1-element array) for the numpy flavour."""
    window = _window(a.shape[0], a.shape[1], small, scale)
    c1 = (K1 * max_val) ** 2
    c2 = (K2 * max_val) ** 2
    rows = a.shape[0] - len(window) + 1
    cols = a.shape[1] - len(window) + 1
    partial = np.zeros((_THREADS, a.shape[2], 2))

    def band(index: int, r0: int, r1: int) -> None:
        kernels.ssim_band(a, b, window, c1, c2, r0, r1, partial[index], True)

    _in_bands(rows, rows * cols, band)
    sums = partial.sum(axis=0)
    if flavor is Flavor.NUMPY:
        sums = sums.sum(axis=0, keepdims=True) / a.shape[2]
    return sums[:, 0] / (rows * cols), sums[:, 1] / (rows * cols)


def _in_bands(rows: int, pixels: int, task: Callable[[int, int, int], None]) -> None:
    """Runs task(band, first_row, end_row) over bands of rows: one band per core when the work
    is large enough to pay for the threads (the kernels release the GIL), else one band here."""
    bands = min(_THREADS, rows) if pixels >= PARALLEL_MIN_PIXELS else 1
    if bands == 1:
        task(0, 0, rows)
        return
    edges = np.linspace(0, rows, bands + 1).astype(np.int64)
    futures = [_POOL.submit(task, i, int(edges[i]), int(edges[i + 1]))
               for i in range(1, bands)]
    task(0, 0, int(edges[1]))  # the calling thread takes a band instead of waiting idle
    for future in futures:
        future.result()


def _prepared(output: np.ndarray, target: np.ndarray,
              channel: Channel) -> tuple[np.ndarray, np.ndarray]:
    return _in_channel(*_as_pair(output, target), channel)


def _in_channel(a: np.ndarray, b: np.ndarray,
                channel: Channel) -> tuple[np.ndarray, np.ndarray]:
    if channel is Channel.Y:
        if a.shape[2] != 3:
            raise InvalidArgument(f"the Y channel needs RGB images, got {a.shape[2]} channels")
        a, b = _luma(a), _luma(b)
    return a, b


def _luma(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.astype(np.float64) @ LUMA_WEIGHTS + LUMA_OFFSET)[..., None]


def _as_pair(output: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = _as_image(output, "output")
    b = _as_image(target, "target")
    if a.shape != b.shape:
        raise InvalidArgument(
            f"output and target differ in shape: {a.shape} vs {b.shape}; "
            "the model must return an image of its input's size"
        )
    if a.dtype != b.dtype:  # the kernels take one dtype for both
        a, b = a.astype(np.float64), b.astype(np.float64)
    return a, b


def _as_image(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise InvalidArgument(f"{what} must be an HxWxC or 1xHxWxC image, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    return np.ascontiguousarray(x)


def _checked(value: float, a: np.ndarray, b: np.ndarray) -> float:
    """NaN or Inf in an image always makes the figure non-finite, so the images are scanned
    only then (a non-finite figure can also be legitimate: identical images, a NaN policy)."""
    if not math.isfinite(value):
        for image, what in ((a, "output"), (b, "target")):
            if not kernels.all_finite(image):
                raise InvalidArgument(f"{what} contains NaN or Inf values")
    return value


def _require_tf_flavor(flavor: Flavor) -> None:
    if flavor is not Flavor.TF:
        raise InvalidArgument("tf_compat reproduces TensorFlow's ops: use it with flavor tf")


def _tf_metric(name: str, a: np.ndarray, b: np.ndarray, max_val: float) -> float:
    """What TensorFlow's own float32 op returns (eager), for reproducing official numbers."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    op = getattr(tf.image, name)
    try:
        value = op(tf.constant(a, tf.float32), tf.constant(b, tf.float32), max_val=max_val)
    except tf.errors.InvalidArgumentError as error:
        raise InvalidArgument(f"tf.image.{name}: {error.message.splitlines()[0]}") from error
    return float(value.numpy())


def evaluate_pair(output: np.ndarray, target: np.ndarray, options: QualityOptions) -> PairQuality:
    """Crop, clip and measure one (output, target) pair."""
    a, b = _as_pair(output, target)  # validated once for all the figures of the pair
    # Checked up front: clipping would turn an Inf into 1 and cropping could hide a NaN.
    _checked(math.nan, a, b)
    border = options.crop_border
    if border:
        if min(a.shape[:2]) <= 2 * border:
            raise InvalidArgument(
                f"a {border}-pixel border crop leaves nothing of a {a.shape[0]}x{a.shape[1]} image"
            )
        a = np.ascontiguousarray(a[border:-border, border:-border])
        b = np.ascontiguousarray(b[border:-border, border:-border])
    clipped = _in_channel(np.clip(a, 0.0, 1.0), np.clip(b, 0.0, 1.0), options.channel)
    raw = _in_channel(a, b, options.channel)
    psnr_pair = clipped if options.clip_psnr_input else raw
    ssim_pair = clipped if options.clip_msssim_input else raw
    tf_compat, flavor = options.tf_compat, options.flavor
    with telemetry.computing("psnr"):
        psnr_value = _psnr(*psnr_pair, 1.0, tf_compat)
    with telemetry.computing(f"msssim_{flavor.value}"):
        msssim_value = _ms_ssim(*ssim_pair, flavor, 1.0, options.negative, options.small,
                                tf_compat)
    ssim_value = None
    if options.with_ssim:
        with telemetry.computing(f"ssim_{flavor.value}"):
            ssim_value = _ssim(*ssim_pair, flavor, 1.0, options.small, tf_compat)
    telemetry.pair_measured(a.shape[0] * a.shape[1])
    return PairQuality(psnr=psnr_value, msssim=msssim_value, ssim=ssim_value)


def evaluate_batch(
    pairs: list[tuple[np.ndarray, np.ndarray]], options: QualityOptions
) -> list[PairQuality]:
    """Measures many pairs, several at once (the kernels release the GIL), in their order.
    A bad pair raises InvalidArgument naming its index."""

    def measure(index: int) -> PairQuality:
        try:
            return evaluate_pair(pairs[index][0], pairs[index][1], options)
        except InvalidArgument as error:
            raise InvalidArgument(f"pair {index}: {error}") from error

    return list(_BATCH_POOL.map(measure, range(len(pairs))))


def warm_up() -> None:
    """Loads (or compiles, once per machine) every kernel signature a request can use. Images
    decoded from a request are read-only views of its bytes, a signature of their own."""
    for dtype in (np.float32, np.float64):
        for writeable in (True, False):
            x = np.zeros((176, 176, 3), dtype)
            small = np.zeros((20, 20, 3), dtype)
            x.setflags(write=writeable)
            small.setflags(write=writeable)
            ms_ssim(x, x, Flavor.TF)
            ms_ssim(small, small, Flavor.NUMPY)
            psnr(x, x)
            _checked(math.nan, x, x)
