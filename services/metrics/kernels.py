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
def ssim_band(x, y, g, c1, c2, r0, r1, out, with_ssim):
    """Adds, per channel, the sums of luminance*cs (if with_ssim, else out[:, 0] stays) and of
    cs over output rows [r0, r1) of the 'valid' area of an HxWxC pair filtered by outer(g, g).
    All in float64. MS-SSIM needs luminance at its last scale only: the other four skip it.

    Vertical pass first: each output row sums its len(g) input rows into four rows holding the
    filtered x, y, x*y and x*x + y*y (the products are formed from the input, which stays in
    cache, instead of being stored); then the horizontal pass over those four rows, fused with
    the SSIM terms, which are summed per column and reduced per channel once per band.
    """
    # The channel count is the horizontal stride: as a constant it lets the compiler vectorise
    # the horizontal pass (5x faster than with a stride known only at run time).
    if x.shape[2] == 3:
        _band(x, y, g, c1, c2, r0, r1, out, with_ssim, 3)
    elif x.shape[2] == 1:
        _band(x, y, g, c1, c2, r0, r1, out, with_ssim, 1)
    else:
        _band(x, y, g, c1, c2, r0, r1, out, with_ssim, x.shape[2])


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _band(x, y, g, c1, c2, r0, r1, out, with_ssim, s):
    w = x.shape[1]
    wc = w * s
    cols = (w - g.shape[0] + 1) * s
    filtered = np.empty((4, wc))
    sum_ssim = np.zeros(cols)
    sum_cs = np.zeros(cols)
    for i in range(r0, r1):
        _vertical(x, y, g, i, filtered)
        if with_ssim or g.shape[0] != 11:
            _horizontal_terms(filtered, g, s, c1, c2, sum_ssim, sum_cs)
        else:
            _horizontal_cs(filtered, g, s, c2, sum_cs)
    for ch in range(s):
        for t in range(ch, cols, s):
            out[ch, 0] += sum_ssim[t]
            out[ch, 1] += sum_cs[t]


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _vertical(x, y, g, i, out):
    """out[0..3] = the four maps of input rows i .. i+len(g)-1 filtered by g vertically."""
    wc = x.shape[1] * x.shape[2]
    if g.shape[0] != 11:
        out[:] = 0.0
        for k in range(g.shape[0]):
            xr = x[i + k].reshape(wc)
            yr = y[i + k].reshape(wc)
            for t in range(wc):
                a = np.float64(xr[t])
                b = np.float64(yr[t])
                out[0, t] += g[k] * a
                out[1, t] += g[k] * b
                out[2, t] += g[k] * (a * b)
                out[3, t] += g[k] * (a * a + b * b)
        return
    # The 11-tap window written out: every tap in a register, g symmetric (g[k] = g[10-k]).
    g0, g1, g2, g3, g4, g5 = g[0], g[1], g[2], g[3], g[4], g[5]
    x0, x1, x2, x3 = x[i].reshape(wc), x[i + 1].reshape(wc), x[i + 2].reshape(wc), x[
        i + 3].reshape(wc)
    x4, x5, x6, x7 = x[i + 4].reshape(wc), x[i + 5].reshape(wc), x[i + 6].reshape(wc), x[
        i + 7].reshape(wc)
    x8, x9, x10 = x[i + 8].reshape(wc), x[i + 9].reshape(wc), x[i + 10].reshape(wc)
    y0, y1, y2, y3 = y[i].reshape(wc), y[i + 1].reshape(wc), y[i + 2].reshape(wc), y[
        i + 3].reshape(wc)
    y4, y5, y6, y7 = y[i + 4].reshape(wc), y[i + 5].reshape(wc), y[i + 6].reshape(wc), y[
        i + 7].reshape(wc)
    y8, y9, y10 = y[i + 8].reshape(wc), y[i + 9].reshape(wc), y[i + 10].reshape(wc)
    for t in range(wc):
        a0, a1, a2, a3 = np.float64(x0[t]), np.float64(x1[t]), np.float64(x2[t]), np.float64(
            x3[t])
        a4, a5, a6, a7 = np.float64(x4[t]), np.float64(x5[t]), np.float64(x6[t]), np.float64(
            x7[t])
        a8, a9, a10 = np.float64(x8[t]), np.float64(x9[t]), np.float64(x10[t])
        b0, b1, b2, b3 = np.float64(y0[t]), np.float64(y1[t]), np.float64(y2[t]), np.float64(
            y3[t])
        b4, b5, b6, b7 = np.float64(y4[t]), np.float64(y5[t]), np.float64(y6[t]), np.float64(
            y7[t])
        b8, b9, b10 = np.float64(y8[t]), np.float64(y9[t]), np.float64(y10[t])
        out[0, t] = (g0 * (a0 + a10) + g1 * (a1 + a9) + g2 * (a2 + a8) + g3 * (a3 + a7)
                     + g4 * (a4 + a6) + g5 * a5)
        out[1, t] = (g0 * (b0 + b10) + g1 * (b1 + b9) + g2 * (b2 + b8) + g3 * (b3 + b7)
                     + g4 * (b4 + b6) + g5 * b5)
        out[2, t] = (g0 * (a0 * b0 + a10 * b10) + g1 * (a1 * b1 + a9 * b9)
                     + g2 * (a2 * b2 + a8 * b8) + g3 * (a3 * b3 + a7 * b7)
                     + g4 * (a4 * b4 + a6 * b6) + g5 * (a5 * b5))
        out[3, t] = (g0 * (a0 * a0 + b0 * b0 + a10 * a10 + b10 * b10)
                     + g1 * (a1 * a1 + b1 * b1 + a9 * a9 + b9 * b9)
                     + g2 * (a2 * a2 + b2 * b2 + a8 * a8 + b8 * b8)
                     + g3 * (a3 * a3 + b3 * b3 + a7 * a7 + b7 * b7)
                     + g4 * (a4 * a4 + b4 * b4 + a6 * a6 + b6 * b6)
                     + g5 * (a5 * a5 + b5 * b5))


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _horizontal_terms(filtered, g, s, c1, c2, sum_ssim, sum_cs):
    """Filters the four vertically filtered rows horizontally (stride s = channels) and adds
    each column's SSIM terms: luminance * cs to sum_ssim, cs to sum_cs."""
    fx, fy, fxy, fsq = filtered[0], filtered[1], filtered[2], filtered[3]
    n = g.shape[0]
    if n != 11:
        for t in range(sum_cs.shape[0]):
            mx = my = mxy = msq = 0.0
            for k in range(n):
                mx += g[k] * fx[t + k * s]
                my += g[k] * fy[t + k * s]
                mxy += g[k] * fxy[t + k * s]
                msq += g[k] * fsq[t + k * s]
            _add_terms(mx, my, mxy, msq, c1, c2, t, sum_ssim, sum_cs)
        return
    for t in range(sum_cs.shape[0]):
        mx, my, mxy, msq = _means11(filtered, g, s, t)
        _add_terms(mx, my, mxy, msq, c1, c2, t, sum_ssim, sum_cs)


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _horizontal_cs(filtered, g, s, c2, sum_cs):
    """_horizontal_terms without luminance (15% less time: no second sum, fewer products)."""
    for t in range(sum_cs.shape[0]):
        mx, my, mxy, msq = _means11(filtered, g, s, t)
        sum_cs[t] += (2.0 * (mxy - mx * my) + c2) / (msq - (mx * mx + my * my) + c2)


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _means11(filtered, g, s, t):
    """The four maps of column t filtered horizontally by the 11-tap g (stride s), written out:
    every tap in a register, g symmetric (g[k] = g[10-k])."""
    g0, g1, g2, g3, g4, g5 = g[0], g[1], g[2], g[3], g[4], g[5]
    return (_tap11(filtered[0], t, s, g0, g1, g2, g3, g4, g5),
            _tap11(filtered[1], t, s, g0, g1, g2, g3, g4, g5),
            _tap11(filtered[2], t, s, g0, g1, g2, g3, g4, g5),
            _tap11(filtered[3], t, s, g0, g1, g2, g3, g4, g5))


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _tap11(f, t, s, g0, g1, g2, g3, g4, g5):
    return (g0 * (f[t] + f[t + 10 * s]) + g1 * (f[t + s] + f[t + 9 * s])
            + g2 * (f[t + 2 * s] + f[t + 8 * s]) + g3 * (f[t + 3 * s] + f[t + 7 * s])
            + g4 * (f[t + 4 * s] + f[t + 6 * s]) + g5 * f[t + 5 * s])


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _add_terms(mx, my, mxy, msq, c1, c2, t, sum_ssim, sum_cs):
    """The SSIM terms of one column from its four filtered means (one division for both: a
    division costs as much as the rest of the terms)."""
    mu_ab = mx * my
    mu_sq = mx * mx + my * my
    cs_num = 2.0 * (mxy - mu_ab) + c2
    lum_den = mu_sq + c1
    inv = 1.0 / (lum_den * (msq - mu_sq + c2))
    sum_ssim[t] += (2.0 * mu_ab + c1) * cs_num * inv
    sum_cs[t] += cs_num * lum_den * inv


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
def downsample(x):
    """2x2 mean in float64; an odd side is first extended by repeating its last row/column."""
    out = np.empty(((x.shape[0] + 1) // 2, (x.shape[1] + 1) // 2, x.shape[2]))
    downsample_rows(x, out, 0, out.shape[0])
    return out


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
def downsample_rows(x, out, r0, r1):
    """Rows [r0, r1) of downsample(x) into out (so that bands of rows can run in threads)."""
    if x.shape[2] == 3:  # the channel count as a constant, as in ssim_band
        _downsample_rows(x, out, r0, r1, 3)
    elif x.shape[2] == 1:
        _downsample_rows(x, out, r0, r1, 1)
    else:
        _downsample_rows(x, out, r0, r1, x.shape[2])


@njit(nogil=True, cache=True, fastmath=True, error_model="numpy", inline="always")
def _downsample_rows(x, out, r0, r1, c):
    h, w = x.shape[0], x.shape[1]
    pairs = w // 2  # whole 2x2 blocks per row; an odd last column pairs with itself
    for i in range(r0, r1):
        top = x[2 * i].reshape(w * c)
        bottom = x[min(2 * i + 1, h - 1)].reshape(w * c)
        row = out[i].reshape(out.shape[1] * c)
        for j in range(pairs):
            for ch in range(c):
                left = 2 * j * c + ch
                row[j * c + ch] = (np.float64(top[left]) + np.float64(top[left + c])
                                   + np.float64(bottom[left]) + np.float64(bottom[left + c])) / 4.0
        if w % 2:
            for ch in range(c):
                last = (w - 1) * c + ch
                row[pairs * c + ch] = (np.float64(top[last]) + np.float64(top[last])
                                       + np.float64(bottom[last]) + np.float64(bottom[last])) / 4.0


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
        ssim_band(a, b, g, c1, c2, 0, a.shape[0] - n + 1, sums, True)
        count = (a.shape[0] - n + 1) * (a.shape[1] - n + 1)
        for ch in range(a.shape[2]):
            out[scale, ch, 0] = sums[ch, 0] / count
            out[scale, ch, 1] = sums[ch, 1] / count
