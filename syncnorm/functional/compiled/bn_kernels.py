"""Compiled BatchNorm loops on (A, C, M) views ("rows", M >= MIN_ROW) and on their (A, C*M)
column view ("cols", short rows: BatchNorm1d (N, C), channels-last tensors).

Statistics are float64 shifted sums, S1 = sum(x - K), S2 = sum((x - K)^2), formed value by value
in float64 (the definition, without the numpy kernels' detour through the working dtype): per
channel a sum per row of M values, the rows added in order; per column a sum down the A rows,
the M columns of a channel added in order. Fused kernels do the statistics and the elementwise
pass of one channel (rows) or one tile of whole channels (cols) while it is in cache, with the same
summation code and the same per-channel constants as the separate kernels, so fused and separate
passes agree bit for bit. Elementwise passes run in the working dtype (the dtype of `hw`):
    forward  y  = (x - hw) * aw + cw
    backward dx = dy * kw + (x - hw) * aw + cw
with hw the mean rounded to the working dtype and the rest of the mean folded into cw (exact for
any mean, see `elementwise`). Arrays x, dy, out may hold float16/bfloat16 bits (see `_jit`).
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, kernel, load, store, strict

RESHIFT_RATIO = 1e8  # as moments.RESHIFT_RATIO (kept in step by tests/unit/test_engines.py)


# ---------------------------------------------------------------- per-channel scalars (exact)
@strict
def stats(n, s1, s2, k, eps):
    """(mean, var, invstd, poorly_shifted) of one channel from its shifted sums about k."""
    d = s1 / n
    mean = k + d
    v = s2 / n - d * d
    var = 0.0 if v < 0.0 else v  # NaN stays NaN
    poor = d * d > RESHIFT_RATIO * var and d != 0.0
    return mean, var, 1.0 / np.sqrt(var + eps), poor


@strict
def forward_consts(mean, invstd, w, b, hw, aw, cw, j):
    """hw[j], aw[j], cw[j] of y = (x - hw) * aw + cw = (x - mean) * invstd * w + b."""
    scale = invstd * w
    hw[j] = mean
    lo = mean - np.float64(hw[j])
    shift = -lo * scale
    cw[j] = shift + b
    aw[j] = scale


@strict
def backward_consts(mean, invstd, w, g, h, count, hw, kw, aw, cw, j):
    """Constants of dx = dy * kw + (x - hw) * aw + cw, from the (global) sums g = sum(dy),
    h = sum(dy * (x - mean)) and count."""
    k = invstd * w
    e = h * invstd * invstd / count
    hw[j] = mean
    lo = mean - np.float64(hw[j])
    ke = k * e
    cw[j] = ke * lo - k * g / count
    aw[j] = -ke
    kw[j] = k


@strict
def all_forward_consts(mean, invstd, w, b, hw, aw, cw):
    """`forward_consts` for every channel."""
    for c in range(mean.shape[0]):
        forward_consts(mean[c], invstd[c], w[c], b[c], hw, aw, cw, c)


@strict
def all_backward_consts(mean, invstd, w, g, h, count, hw, kw, aw, cw):
    """`backward_consts` for every channel."""
    for c in range(mean.shape[0]):
        backward_consts(mean[c], invstd[c], w[c], g[c], h[c], count, hw, kw, aw, cw, c)


# ---------------------------------------------------------------- rows: one channel
@helper
def _chan_sums(x, c, k):
    s1 = 0.0
    s2 = 0.0
    for a in range(x.shape[0]):
        r1 = 0.0
        r2 = 0.0
        for m in range(x.shape[2]):
            d = np.float64(load(x[a, c, m])) - k
            r1 += d
            r2 += d * d
        s1 += r1
        s2 += r2
    return s1, s2


@helper
def _chan_grad_sums(dy, x, c, mean):
    g = 0.0
    h = 0.0
    for a in range(x.shape[0]):
        r1 = 0.0
        r2 = 0.0
        for m in range(x.shape[2]):
            d = np.float64(load(dy[a, c, m]))
            r1 += d
            r2 += d * (np.float64(load(x[a, c, m])) - mean)
        g += r1
        h += r2
    return g, h


@strict
def _chan_affine(x, out, c, hv, av, cv):
    for a in range(x.shape[0]):
        for m in range(x.shape[2]):
            out[a, c, m] = store((load(x[a, c, m]) - hv) * av + cv, out)


@strict
def _chan_elemt(dy, x, out, c, hv, kv, av, cv):
    for a in range(x.shape[0]):
        for m in range(x.shape[2]):
            out[a, c, m] = store(load(dy[a, c, m]) * kv + (load(x[a, c, m]) - hv) * av + cv, out)


@kernel
def row_moments(x, shift, s1, s2):
    """s1[c], s2[c] = shifted sums of channel c of x (A, C, M) about shift[c]."""
    for c in prange(x.shape[1]):
        s1[c], s2[c] = _chan_sums(x, c, shift[c])


@kernel
def row_grad_sums(dy, x, mean, g, h):
    """g[c] = sum(dy), h[c] = sum(dy * (x - mean[c])) over channel c, float64."""
    for c in prange(x.shape[1]):
        g[c], h[c] = _chan_grad_sums(dy, x, c, mean[c])


@kernel
def row_affine(x, out, hw, aw, cw):
    """out = (x - hw) * aw + cw per channel; x, out (A, C, M)."""
    for c in prange(x.shape[1]):
        _chan_affine(x, out, c, hw[c], aw[c], cw[c])


@kernel
def row_elemt(dy, x, out, hw, kw, aw, cw):
    """out = dy * kw + (x - hw) * aw + cw per channel."""
    for c in prange(x.shape[1]):
        _chan_elemt(dy, x, out, c, hw[c], kw[c], aw[c], cw[c])


@kernel
def row_forward(x, shift, w, b, eps, out, mean, var, invstd, hw, aw, cw, poor):
    """Local BatchNorm forward, one channel at a time in cache: statistics about shift[c], then
    out = (x - mean) * invstd * w + b. A channel whose shift was far off (poor[c] = 1) is left
    unnormalized: the caller then runs the separate passes."""
    A, C, M = x.shape
    for c in prange(C):
        s1, s2 = _chan_sums(x, c, shift[c])
        mean[c], var[c], invstd[c], bad = stats(np.float64(A * M), s1, s2, shift[c], eps)
        poor[c] = bad
        if not bad:
            forward_consts(mean[c], invstd[c], w[c], b[c], hw, aw, cw, c)
            _chan_affine(x, out, c, hw[c], aw[c], cw[c])


@kernel
def row_backward(dy, x, mean, invstd, w, out, g, h, hw, kw, aw, cw):
    """Local BatchNorm input gradient, one channel at a time in cache: g, h (float64 sums), then
    out = dx from them (count = A * M)."""
    A, C, M = x.shape
    for c in prange(C):
        g[c], h[c] = _chan_grad_sums(dy, x, c, mean[c])
        backward_consts(mean[c], invstd[c], w[c], g[c], h[c], np.float64(A * M), hw, kw, aw, cw, c)
        _chan_elemt(dy, x, out, c, hw[c], kw[c], aw[c], cw[c])


# ---------------------------------------------------------------- cols: tiles of whole channels
# (the column helpers take the whole (A, C*M) arrays and slice one row at a time, x[a, j0:j1], a
# contiguous 1-d array: a 2-d slice x[:, j0:j1] has unknown strides, and an index j0 + j is checked
# for wrap-around at every access; either stops vectorization)
@helper
def _col_sums(x, j0, j1, kcol, t1, t2):
    """t1[j], t2[j] = sums of x[:, j0 + j] - kcol[j0 + j] and of its square, float64; four rows at
    a time (a fixed order: the same whatever the tile)."""
    t1[:] = 0.0
    t2[:] = 0.0
    k = kcol[j0:j1]
    A = x.shape[0]
    a = 0
    while a + 4 <= A:
        x0 = x[a, j0:j1]
        x1 = x[a + 1, j0:j1]
        x2 = x[a + 2, j0:j1]
        x3 = x[a + 3, j0:j1]
        for j in range(j1 - j0):
            d0 = np.float64(load(x0[j])) - k[j]
            d1 = np.float64(load(x1[j])) - k[j]
            d2 = np.float64(load(x2[j])) - k[j]
            d3 = np.float64(load(x3[j])) - k[j]
            t1[j] += (d0 + d1) + (d2 + d3)
            t2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        a += 4
    for b in range(a, A):
        xb = x[b, j0:j1]
        for j in range(j1 - j0):
            d = np.float64(load(xb[j])) - k[j]
            t1[j] += d
            t2[j] += d * d


@helper
def _col_grad_sums(dy, x, j0, j1, mcol, t1, t2):
    """t1[j] = sum of dy[:, j0 + j], t2[j] = sum of dy * (x - mcol) over it; four rows at a time."""
    t1[:] = 0.0
    t2[:] = 0.0
    mu = mcol[j0:j1]
    A = x.shape[0]
    a = 0
    while a + 4 <= A:
        x0 = x[a, j0:j1]
        x1 = x[a + 1, j0:j1]
        x2 = x[a + 2, j0:j1]
        x3 = x[a + 3, j0:j1]
        y0 = dy[a, j0:j1]
        y1 = dy[a + 1, j0:j1]
        y2 = dy[a + 2, j0:j1]
        y3 = dy[a + 3, j0:j1]
        for j in range(j1 - j0):
            e0 = np.float64(load(y0[j]))
            e1 = np.float64(load(y1[j]))
            e2 = np.float64(load(y2[j]))
            e3 = np.float64(load(y3[j]))
            t1[j] += (e0 + e1) + (e2 + e3)
            t2[j] += ((e0 * (np.float64(load(x0[j])) - mu[j]) + e1 * (np.float64(load(x1[j])) - mu[j]))
                      + (e2 * (np.float64(load(x2[j])) - mu[j])
                         + e3 * (np.float64(load(x3[j])) - mu[j])))
        a += 4
    for b in range(a, A):
        xb = x[b, j0:j1]
        yb = dy[b, j0:j1]
        for j in range(j1 - j0):
            e = np.float64(load(yb[j]))
            t1[j] += e
            t2[j] += e * (np.float64(load(xb[j])) - mu[j])


@helper
def _fold(t, c, M, j0):
    """The M columns of channel c (tile starting at column j0) added in order."""
    s = 0.0
    for m in range(M):
        s += t[c * M + m - j0]
    return s


@strict
def _col_affine(x, out, j0, j1, hc, ac, cc):
    """out[:, j0:j1] = (x - hc) * ac + cc, constants (j1 - j0,)."""
    for a in range(x.shape[0]):
        xa = x[a, j0:j1]
        oa = out[a, j0:j1]
        for j in range(j1 - j0):
            oa[j] = store((load(xa[j]) - hc[j]) * ac[j] + cc[j], out)


@strict
def _col_elemt(dy, x, out, j0, j1, hc, kc, ac, cc):
    """out[:, j0:j1] = dy * kc + (x - hc) * ac + cc."""
    for a in range(x.shape[0]):
        xa = x[a, j0:j1]
        da = dy[a, j0:j1]
        oa = out[a, j0:j1]
        for j in range(j1 - j0):
            oa[j] = store(load(da[j]) * kc[j] + (load(xa[j]) - hc[j]) * ac[j] + cc[j], out)


@kernel
def col_moments(x, kcol, M, tile, s1, s2):
    """Shifted sums per channel of x (A, C*M) about kcol (C*M,) (the shift repeated per column);
    tiles of `tile` columns (a multiple of M)."""
    CM = x.shape[1]
    for i in prange((CM + tile - 1) // tile):
        j0 = i * tile
        j1 = min(CM, j0 + tile)
        t1 = np.empty(j1 - j0)
        t2 = np.empty(j1 - j0)
        _col_sums(x, j0, j1, kcol, t1, t2)
        for c in range(j0 // M, j1 // M):
            s1[c] = _fold(t1, c, M, j0)
            s2[c] = _fold(t2, c, M, j0)


@kernel
def col_grad_sums(dy, x, mcol, M, tile, g, h):
    """g, h per channel of (A, C*M) views; mcol the mean repeated per column (float64)."""
    CM = x.shape[1]
    for i in prange((CM + tile - 1) // tile):
        j0 = i * tile
        j1 = min(CM, j0 + tile)
        t1 = np.empty(j1 - j0)
        t2 = np.empty(j1 - j0)
        _col_grad_sums(dy, x, j0, j1, mcol, t1, t2)
        for c in range(j0 // M, j1 // M):
            g[c] = _fold(t1, c, M, j0)
            h[c] = _fold(t2, c, M, j0)


@kernel
def col_affine(x, out, hcol, acol, ccol, tile):
    """out = (x - hcol) * acol + ccol per column of (A, C*M) views."""
    CM = x.shape[1]
    for i in prange((CM + tile - 1) // tile):
        j0 = i * tile
        j1 = min(CM, j0 + tile)
        _col_affine(x, out, j0, j1, hcol[j0:j1], acol[j0:j1], ccol[j0:j1])


@kernel
def col_elemt(dy, x, out, hcol, kcol, acol, ccol, tile):
    """out = dy * kcol + (x - hcol) * acol + ccol per column."""
    CM = x.shape[1]
    for i in prange((CM + tile - 1) // tile):
        j0 = i * tile
        j1 = min(CM, j0 + tile)
        _col_elemt(dy, x, out, j0, j1, hcol[j0:j1], kcol[j0:j1], acol[j0:j1],
                   ccol[j0:j1])


@kernel
def col_forward(x, kcol, M, tile, w, b, eps, out, mean, var, invstd, hw, aw, cw, poor):
    """Local BatchNorm forward on the (A, C*M) view, one tile of whole channels at a time in
    cache (see `row_forward`)."""
    A, CM = x.shape
    for i in prange((CM + tile - 1) // tile):
        j0 = i * tile
        j1 = min(CM, j0 + tile)
        t1 = np.empty(j1 - j0)
        t2 = np.empty(j1 - j0)
        _col_sums(x, j0, j1, kcol, t1, t2)
        hc = np.empty(j1 - j0, hw.dtype)
        ac = np.empty(j1 - j0, hw.dtype)
        cc = np.empty(j1 - j0, hw.dtype)
        any_poor = False
        for c in range(j0 // M, j1 // M):
            k = kcol[c * M]
            mean[c], var[c], invstd[c], bad = stats(np.float64(A * M), _fold(t1, c, M, j0),
                                                    _fold(t2, c, M, j0), k, eps)
            poor[c] = bad
            any_poor = any_poor or bad
            forward_consts(mean[c], invstd[c], w[c], b[c], hw, aw, cw, c)
            for m in range(M):
                hc[c * M + m - j0] = hw[c]
                ac[c * M + m - j0] = aw[c]
                cc[c * M + m - j0] = cw[c]
        if not any_poor:
            _col_affine(x, out, j0, j1, hc, ac, cc)


@kernel
def col_backward(dy, x, mcol, M, tile, invstd, w, out, g, h, hw, kw, aw, cw):
    """Local BatchNorm input gradient on (A, C*M) views, one tile of channels at a time."""
    A, CM = x.shape
    for i in prange((CM + tile - 1) // tile):
        j0 = i * tile
        j1 = min(CM, j0 + tile)
        t1 = np.empty(j1 - j0)
        t2 = np.empty(j1 - j0)
        _col_grad_sums(dy, x, j0, j1, mcol, t1, t2)
        hc = np.empty(j1 - j0, hw.dtype)
        kc = np.empty(j1 - j0, hw.dtype)
        ac = np.empty(j1 - j0, hw.dtype)
        cc = np.empty(j1 - j0, hw.dtype)
        for c in range(j0 // M, j1 // M):
            g[c] = _fold(t1, c, M, j0)
            h[c] = _fold(t2, c, M, j0)
            backward_consts(mcol[c * M], invstd[c], w[c], g[c], h[c], np.float64(A * M), hw, kw, aw, cw, c)
            for m in range(M):
                hc[c * M + m - j0] = hw[c]
                kc[c * M + m - j0] = kw[c]
                ac[c * M + m - j0] = aw[c]
                cc[c * M + m - j0] = cw[c]
        _col_elemt(dy, x, out, j0, j1, hc, kc, ac, cc)
