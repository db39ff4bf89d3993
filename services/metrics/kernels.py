"""Compiled kernels of the metrics (numba, nogil, cached on disk).

Why numba: the SSIM statistics need one pass over the image with four filtered maps; NumPy or
SciPy make a full-size temporary per map and per filter tap, OpenCV filters in float32 or pays
for float64 one map at a time. A fused numba loop keeps the work in cache, computes everything
in float64 (the exact definition), releases the GIL so that bands of rows run on all cores, and
is cached on disk so that no request pays for compilation.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# fastmath lets the sums be vectorised; error_model="numpy" drops Python's division-by-zero
# check (the denominators here are never zero), without which no loop with a division is.


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
def ssim_band(x, y, g, c1, c2, r0, r1, out):
    """Adds, per channel, the sums of luminance*cs and of cs over output rows [r0, r1) of the
    'valid' area of an HxWxC pair filtered by outer(g, g).

    Each input row is filtered horizontally once into rings of len(g) rows holding the four
    maps x, y, x*y and x*x + y*y; each output row combines the rings vertically; the SSIM terms
    are summed per column and reduced per channel once per band. All in float64.
    """
    h, w, c = x.shape
    n = g.shape[0]
    cols = (w - n + 1) * c
    rings = np.empty((4, n, cols))
    rows = np.empty((4, w * c))
    means = np.empty((4, cols))
    sum_ssim = np.zeros(cols)
    sum_cs = np.zeros(cols)
    for r in range(r0, r1 + n - 1):
        xr = x[r].reshape(w * c)
        yr = y[r].reshape(w * c)
        for t in range(w * c):
            a = np.float64(xr[t])
            b = np.float64(yr[t])
            rows[0, t] = a
            rows[1, t] = b
            rows[2, t] = a * b
            rows[3, t] = a * a + b * b
        slot = r % n
        for m in range(4):
            _filter_row(rows[m], g, c, rings[m, slot])
        i = r - (n - 1)
        if i < r0:
            continue
        for m in range(4):
            _combine_rows(rings[m], g, i % n, means[m])
        mean_x, mean_y, mean_xy, mean_sq = means[0], means[1], means[2], means[3]
        for t in range(cols):
            mu_ab = mean_x[t] * mean_y[t]
            mu_sq = mean_x[t] * mean_x[t] + mean_y[t] * mean_y[t]
            cs = (2.0 * (mean_xy[t] - mu_ab) + c2) / (mean_sq[t] - mu_sq + c2)
            sum_ssim[t] += (2.0 * mu_ab + c1) / (mu_sq + c1) * cs
            sum_cs[t] += cs
    for ch in range(c):
        for t in range(ch, cols, c):
            out[ch, 0] += sum_ssim[t]
            out[ch, 1] += sum_cs[t]


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _filter_row(row, g, stride, out):
    """out[t] = sum_k g[k] * row[t + k * stride]; the 11-tap case written out so that the
    loop over t keeps every tap in registers and vectorises."""
    if g.shape[0] == 11:
        s = stride
        g0, g1, g2, g3, g4, g5 = g[0], g[1], g[2], g[3], g[4], g[5]
        g6, g7, g8, g9, g10 = g[6], g[7], g[8], g[9], g[10]
        for t in range(out.shape[0]):
            out[t] = (g0 * row[t] + g1 * row[t + s] + g2 * row[t + 2 * s]
                      + g3 * row[t + 3 * s] + g4 * row[t + 4 * s] + g5 * row[t + 5 * s]
                      + g6 * row[t + 6 * s] + g7 * row[t + 7 * s] + g8 * row[t + 8 * s]
                      + g9 * row[t + 9 * s] + g10 * row[t + 10 * s])
        return
    out[:] = 0.0
    for k in range(g.shape[0]):
        weight = g[k]
        offset = k * stride
        for t in range(out.shape[0]):
            out[t] += weight * row[t + offset]


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _combine_rows(ring, g, first, out):
    """out = sum_k g[k] * ring[(first + k) % n]: the vertical pass over the ring of rows."""
    n = g.shape[0]
    if n == 11:
        r0, r1, r2, r3 = ring[first % n], ring[(first + 1) % n], ring[(first + 2) % n], ring[
            (first + 3) % n]
        r4, r5, r6, r7 = ring[(first + 4) % n], ring[(first + 5) % n], ring[
            (first + 6) % n], ring[(first + 7) % n]
        r8, r9, r10 = ring[(first + 8) % n], ring[(first + 9) % n], ring[(first + 10) % n]
        g0, g1, g2, g3, g4, g5 = g[0], g[1], g[2], g[3], g[4], g[5]
        g6, g7, g8, g9, g10 = g[6], g[7], g[8], g[9], g[10]
        for t in range(out.shape[0]):
            out[t] = (g0 * r0[t] + g1 * r1[t] + g2 * r2[t] + g3 * r3[t] + g4 * r4[t]
                      + g5 * r5[t] + g6 * r6[t] + g7 * r7[t] + g8 * r8[t] + g9 * r9[t]
                      + g10 * r10[t])
        return
    out[:] = 0.0
    for k in range(n):
        weight = g[k]
        src = ring[(first + k) % n]
        for t in range(out.shape[0]):
            out[t] += weight * src[t]


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
def downsample(x):
    """2x2 mean in float64; an odd side is first extended by repeating its last row/column."""
    h, w, c = x.shape
    ho = (h + 1) // 2
    wo = (w + 1) // 2
    out = np.empty((ho, wo, c))
    for i in range(ho):
        i0 = 2 * i
        i1 = min(2 * i + 1, h - 1)
        for j in range(wo):
            j0 = 2 * j
            j1 = min(2 * j + 1, w - 1)
            for ch in range(c):
                out[i, j, ch] = (np.float64(x[i0, j0, ch]) + np.float64(x[i1, j0, ch])
                                 + np.float64(x[i0, j1, ch]) + np.float64(x[i1, j1, ch])) / 4.0
    return out


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
def squared_error_sum(x, y):
    """Sum of (x - y)^2 over all elements, in float64."""
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    total = 0.0
    for t in range(xf.size):
        d = np.float64(xf[t]) - np.float64(yf[t])
        total += d * d
    return total


@njit(nogil=True, cache=True)
def all_finite(x):
    xf = x.reshape(x.size)
    for t in range(xf.size):  # noqa: SIM110 - numba compiles loops, not generators
        if not np.isfinite(xf[t]):
            return False
    return True


@njit(nogil=True, cache=True)
def gaussian_window(size, sigma):
    """Normalised 1-D Gaussian of `size` taps; its outer product is the 2-D window of both
    MS-SSIM flavours (TF's softmax form and the NumPy code's fspecial form are the same)."""
    g = np.empty(size)
    for k in range(size):
        d = k - (size - 1) / 2.0
        g[k] = np.exp(-(d * d) / (2.0 * sigma * sigma))
    return g / g.sum()


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
def pyramid_terms(x, y, levels, size, sigma, c1, c2, out):
    """All scales of a small pair in one call (no per-scale Python overhead): out[scale, ch]
    gets the mean SSIM and mean contrast-structure of that scale. The window shrinks to the
    image where a side is below `size` (the caller has checked that this is allowed)."""
    a = x.astype(np.float64)  # one dtype through the pyramid (small images: a cheap copy)
    b = y.astype(np.float64)
    for scale in range(levels):
        if scale > 0:
            a = downsample(a)
            b = downsample(b)
        side = min(a.shape[0], a.shape[1])
        n = min(size, side)
        g = gaussian_window(n, n * sigma / size)
        sums = np.zeros((a.shape[2], 2))
        ssim_band(a, b, g, c1, c2, 0, a.shape[0] - n + 1, sums)
        count = (a.shape[0] - n + 1) * (a.shape[1] - n + 1)
        for ch in range(a.shape[2]):
            out[scale, ch, 0] = sums[ch, 0] / count
            out[scale, ch, 1] = sums[ch, 1] / count
