"""Compiled BatchNorm loops on (A, C, M) views ("rows", M >= MIN_ROW) and on their (A, C*M)
column view ("cols", short rows: BatchNorm1d (N, C), channels-last tensors).

Statistics are float64 shifted sums, S1 = sum(x - K), S2 = sum((x - K)^2), with the numpy
kernels' rule (`moments`): rows are cut into pieces of at most PIECE values, each summed in the
working dtype about K (or about its own mean when K is far from it) and combined in float64, in
order; columns (short rows) are summed down the A rows in float64, four rows at a time, and the M
columns of a channel added in order. Fused kernels do the statistics and the elementwise
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

from ._jit import helper, kernel, load, store, strict, to_work

RESHIFT_RATIO = 1e8  # as moments.RESHIFT_RATIO (kept in step by tests/unit/test_engines.py)
UNCENTRED_LIMIT = 16.0  # as moments.UNCENTRED_LIMIT
#: longest run of values summed in the working dtype (float32: at most 128 terms per vector lane)
PIECE = 2048
#: rows of a column view whose gradient sums are added in the working dtype before float64
COL_FLUSH = 64


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
def _sums_about(xs, kw):
    """(sum(x - kw), sum((x - kw)^2)) of a piece in the working dtype (kw in it)."""
    t1 = to_work(0.0, xs)
    t2 = to_work(0.0, xs)
    for m in range(xs.shape[0]):
        d = load(xs[m]) - kw
        t1 += d
        t2 += d * d
    return t1, t2


@helper
def _piece_sums(xr, p0, p1, k):
    """Shifted sums (S1, S2) of xr[p0:p1] about k (float64): summed in the working dtype about k
    rounded to it, or, for a piece whose mean is more than 4 of its standard deviations from that
    (or a constant piece), about the piece's own rounded mean; combined in float64 (as
    `moments._piece_moments`)."""
    xs = xr[p0:p1]  # (a slice: an index p0 + m would be checked for wrap-around, unvectorized)
    kw = to_work(k, xr)
    t1, t2 = _sums_about(xs, kw)
    n = np.float64(p1 - p0)
    a1 = np.float64(t1)
    mt = a1 / n
    centred = np.float64(t2) - a1 * mt
    if mt * mt > (UNCENTRED_LIMIT / n) * centred:  # NaN compares False: propagates
        kw = to_work(np.float64(kw) + mt, xr)
        t1, t2 = _sums_about(xs, kw)
        a1 = np.float64(t1)
    off = np.float64(kw) - k
    return a1 + n * off, np.float64(t2) + off * (2.0 * a1 + n * off)


@helper
def _chan_sums(x, c, k):
    """Shifted sums of channel c of x (A, C, M) about k: pieces of at most PIECE values of each
    row (`_piece_sums`), added in order in float64."""
    s1 = 0.0
    s2 = 0.0
    for a in range(x.shape[0]):
        r1, r2 = _row_sums(x[a, c], k)
        s1 += r1
        s2 += r2
    return s1, s2


@helper
def _row_sums(xr, k):
    """One row's contribution to `_chan_sums` (its pieces, added in order)."""
    s1 = 0.0
    s2 = 0.0
    M = xr.shape[0]
    for p0 in range(0, M, PIECE):
        r1, r2 = _piece_sums(xr, p0, min(M, p0 + PIECE), k)
        s1 += r1
        s2 += r2
    return s1, s2


@helper
def _row_grad_sums(dr, xr, hi):
    """One row's (sum(dy), sum(dy * (x - hi))): pieces in the working dtype, added in float64."""
    g = 0.0
    h = 0.0
    M = xr.shape[0]
    for p0 in range(0, M, PIECE):
        xs = xr[p0:min(M, p0 + PIECE)]
        ds = dr[p0:min(M, p0 + PIECE)]
        r1 = to_work(0.0, xr)
        r2 = to_work(0.0, xr)
        for m in range(xs.shape[0]):
            d = load(ds[m])
            r1 += d
            r2 += d * (load(xs[m]) - hi)
        g += np.float64(r1)
        h += np.float64(r2)
    return g, h


@strict
def _row_affine(xr, orow, hv, av, cv, out):
    """orow = (xr - hv) * av + cv (`out`: the array, for its storage format)."""
    for m in range(xr.shape[0]):
        orow[m] = store((load(xr[m]) - hv) * av + cv, out)


@strict
def _row_elemt(dr, xr, orow, hv, kv, av, cv, out):
    for m in range(xr.shape[0]):
        orow[m] = store(load(dr[m]) * kv + (load(xr[m]) - hv) * av + cv, out)


@kernel
def row_moments(x, shift, s1, s2):
    """s1[c], s2[c] = shifted sums of channel c of x (A, C, M) about shift[c]. In memory order
    (sample by sample: the prefetcher streams), adding each channel's rows in the same order as
    `_chan_sums`, so the sums are the same bits."""
    s1[:] = 0.0
    s2[:] = 0.0
    for a in range(x.shape[0]):
        for c in prange(x.shape[1]):
            r1, r2 = _row_sums(x[a, c], shift[c])
            s1[c] += r1
            s2[c] += r2


@kernel
def row_grad_sums(dy, x, hi, lo, g, h):
    """g[c] = sum(dy), h[c] = sum(dy * (x - mean[c])) over channel c, float64, for the mean split
    as hi (working dtype) + lo (float64); memory order."""
    C = x.shape[1]
    g[:] = 0.0
    h[:] = 0.0
    for a in range(x.shape[0]):
        for c in prange(C):
            r1, r2 = _row_grad_sums(dy[a, c], x[a, c], hi[c])
            g[c] += r1
            h[c] += r2
    for c in range(C):
        h[c] -= lo[c] * g[c]


@kernel
def row_affine(x, out, hw, aw, cw):
    """out = (x - hw) * aw + cw per channel; x, out (A, C, M); memory order."""
    for a in range(x.shape[0]):
        for c in prange(x.shape[1]):
            _row_affine(x[a, c], out[a, c], hw[c], aw[c], cw[c], out)


@kernel
def row_elemt(dy, x, out, hw, kw, aw, cw):
    """out = dy * kw + (x - hw) * aw + cw per channel; memory order."""
    for a in range(x.shape[0]):
        for c in prange(x.shape[1]):
            _row_elemt(dy[a, c], x[a, c], out[a, c], hw[c], kw[c], aw[c], cw[c], out)


@kernel
def row_forward(x, shift, w, b, eps, out, mean, var, invstd, hw, aw, cw, poor):
    """Local BatchNorm forward in one call: the statistics (as `row_moments`), the per-channel
    constants, then out = (x - mean) * invstd * w + b (as `row_affine`), both passes in memory
    order (an input that fits the last-level cache is read from memory once). Channels whose shift
    was far off (poor[c] = 1) are left unnormalized: the caller then runs the statistics step."""
    A, C, M = x.shape
    s1 = np.zeros(C)
    s2 = np.zeros(C)
    for a in range(A):
        for c in prange(C):
            r1, r2 = _row_sums(x[a, c], shift[c])
            s1[c] += r1
            s2[c] += r2
    for c in range(C):
        mean[c], var[c], invstd[c], poor[c] = stats(np.float64(A * M), s1[c], s2[c], shift[c], eps)
        forward_consts(mean[c], invstd[c], w[c], b[c], hw, aw, cw, c)
    if not poor.any():
        for a in range(A):
            for c in prange(C):
                _row_affine(x[a, c], out[a, c], hw[c], aw[c], cw[c], out)


@kernel
def row_backward(dy, x, mean, invstd, w, out, g, h, hw, kw, aw, cw):
    """Local BatchNorm input gradient in one call: g, h (as `row_grad_sums`), the constants
    (count = A * M), then out = dx (as `row_elemt`)."""
    A, C, M = x.shape
    hi = np.empty(C, hw.dtype)
    for c in range(C):
        hi[c] = mean[c]
    g[:] = 0.0
    h[:] = 0.0
    for a in range(A):
        for c in prange(C):
            r1, r2 = _row_grad_sums(dy[a, c], x[a, c], hi[c])
            g[c] += r1
            h[c] += r2
    for c in range(C):
        h[c] -= (mean[c] - np.float64(hi[c])) * g[c]
        backward_consts(mean[c], invstd[c], w[c], g[c], h[c], np.float64(A * M), hw, kw, aw, cw, c)
    for a in range(A):
        for c in prange(C):
            _row_elemt(dy[a, c], x[a, c], out[a, c], hw[c], kw[c], aw[c], cw[c], out)


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
def _col_grad_sums(dy, x, j0, j1, mcol, t1, t2, u):
    """t1[j] = sum of dy[:, j0 + j], t2[j] = sum of dy * (x - mcol) over it (float64). As the row
    kernels do: dy * (x - hi), hi the mean rounded to the working dtype, summed in the working
    dtype (u: (3, j1 - j0) scratch of it) four rows at a time over blocks of COL_FLUSH rows, the
    blocks added in float64, then t2 -= (mean - hi) * t1."""
    t1[:] = 0.0
    t2[:] = 0.0
    mu = mcol[j0:j1]
    hs = u[0, :j1 - j0]
    u1 = u[1, :j1 - j0]
    u2 = u[2, :j1 - j0]
    for j in range(j1 - j0):
        hs[j] = to_work(mu[j], x)
    A = x.shape[0]
    for b0 in range(0, A, COL_FLUSH):
        b1 = min(A, b0 + COL_FLUSH)
        u1[:] = 0.0
        u2[:] = 0.0
        a = b0
        while a + 4 <= b1:
            x0 = x[a, j0:j1]
            x1 = x[a + 1, j0:j1]
            x2 = x[a + 2, j0:j1]
            x3 = x[a + 3, j0:j1]
            y0 = dy[a, j0:j1]
            y1 = dy[a + 1, j0:j1]
            y2 = dy[a + 2, j0:j1]
            y3 = dy[a + 3, j0:j1]
            for j in range(j1 - j0):
                e0 = load(y0[j])
                e1 = load(y1[j])
                e2 = load(y2[j])
                e3 = load(y3[j])
                u1[j] += (e0 + e1) + (e2 + e3)
                u2[j] += ((e0 * (load(x0[j]) - hs[j]) + e1 * (load(x1[j]) - hs[j]))
                          + (e2 * (load(x2[j]) - hs[j]) + e3 * (load(x3[j]) - hs[j])))
            a += 4
        for c in range(a, b1):
            xb = x[c, j0:j1]
            yb = dy[c, j0:j1]
            for j in range(j1 - j0):
                e = load(yb[j])
                u1[j] += e
                u2[j] += e * (load(xb[j]) - hs[j])
        for j in range(j1 - j0):
            t1[j] += np.float64(u1[j])
            t2[j] += np.float64(u2[j])
    for j in range(j1 - j0):
        t2[j] -= (mu[j] - np.float64(hs[j])) * t1[j]


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
def col_grad_sums(dy, x, mcol, M, tile, like, g, h):
    """g, h per channel of (A, C*M) views; mcol the mean repeated per column (float64); `like`
    an array of the working dtype."""
    CM = x.shape[1]
    for i in prange((CM + tile - 1) // tile):
        j0 = i * tile
        j1 = min(CM, j0 + tile)
        t1 = np.empty(j1 - j0)
        t2 = np.empty(j1 - j0)
        _col_grad_sums(dy, x, j0, j1, mcol, t1, t2, np.empty((3, j1 - j0), like.dtype))
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
        _col_grad_sums(dy, x, j0, j1, mcol, t1, t2, np.empty((3, j1 - j0), hw.dtype))
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
