"""Compiled loops of the per-sample normalizations on contiguous rows (see `functional.norms`).

GroupNorm and InstanceNorm (per-channel parameters): the input is (1, R, M) rows, R = N * G groups
of M = cg * S values (cg channels of S positions; InstanceNorm: cg = 1). One row at a time in
cache: the statistics (float64 shifted sums about the row's first value, the same code as the
BatchNorm statistics), then the normalize pass with per-channel constants (`bn_kernels`'s strict
helpers, so a fused step equals the separate passes bit for bit); backward: per-channel sums of
dy and dy * (x - mean), then the input gradient, while the row is in cache.

LayerNorm (per-element parameters): (R, D) rows. Forward fused per row as above; backward in two
passes: tiles of columns down all rows (the column sums dweight, dbias and each row's partial sums
of gy = dy * weight and gy * (x - hi), hi the row's mean rounded to the working dtype, summed in
the working dtype per tile and combined in float64 in tile order), then the input gradient row by
row.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, kernel, load, store, strict, to_work
from .bn_kernels import _chan_sums, forward_consts, stats

#: columns per tile of the LayerNorm backward's first pass
LN_TILE = 2048
#: rows whose column sums are added in the working dtype before a float64 flush (numpy kernels:
#: `norms.FLUSH_BLOCKS` blocks)
LN_FLUSH_ROWS = 8


@strict
def _group_affine(x, out, r, S, hc, ac, cc):
    """out[0, r] = (x[0, r] - hc[j]) * ac[j] + cc[j] on the S positions of each channel j."""
    for j in range(hc.shape[0]):
        xs = x[0, r, j * S:(j + 1) * S]
        os_ = out[0, r, j * S:(j + 1) * S]
        for m in range(S):
            os_[m] = store((load(xs[m]) - hc[j]) * ac[j] + cc[j], out)


@strict
def _group_bconsts(mean, invstd, wj, sg, hg, M, hc, kc, ac, cc, j):
    """Constants of dx = dy * kc + (x - hc) * ac + cc for channel j of a group (sums sg of gy and
    hg of gy * (x - mean) over the group's M values)."""
    e = invstd * invstd * invstd * hg / M
    f = invstd * sg / M
    hc[j] = mean
    lo = mean - np.float64(hc[j])
    cc[j] = e * lo - f
    ac[j] = -e
    kc[j] = invstd * wj


@strict
def _group_elemt(dy, x, out, r, S, hc, kc, ac, cc):
    for j in range(hc.shape[0]):
        xs = x[0, r, j * S:(j + 1) * S]
        ds = dy[0, r, j * S:(j + 1) * S]
        os_ = out[0, r, j * S:(j + 1) * S]
        for m in range(S):
            os_[m] = store(load(ds[m]) * kc[j] + (load(xs[m]) - hc[j]) * ac[j] + cc[j], out)


@helper
def _seg_grad_sums(dy, x, r, m0, m1, mean):
    g = 0.0
    h = 0.0
    xs = x[0, r, m0:m1]
    ds = dy[0, r, m0:m1]
    for m in range(m1 - m0):
        d = np.float64(load(ds[m]))
        g += d
        h += d * (np.float64(load(xs[m])) - mean)
    return g, h


@kernel
def group_forward(x, cg, w, b, eps, like, out, mean, var, invstd, poor):
    """Rows x (1, R, M), M = cg * S; channel c = (r % G) * cg + j has weight w[c], bias b[c]
    (float64 (C,)); `like` an array of the working dtype. Writes out and the rows' statistics;
    poor[r] = 1 for a row whose first value was too far from its mean to be a shift (that row is
    left unnormalized: the caller then runs the statistics step)."""
    R, M = x.shape[1], x.shape[2]
    S = M // cg
    G = w.shape[0] // cg
    for r in prange(R):
        hc = np.empty(cg, like.dtype)
        ac = np.empty(cg, like.dtype)
        cc = np.empty(cg, like.dtype)
        k = np.float64(load(x[0, r, 0]))
        s1, s2 = _chan_sums(x, r, k)
        mean[r], var[r], invstd[r], bad = stats(np.float64(M), s1, s2, k, eps)
        poor[r] = bad
        if not bad:
            g = r % G
            for j in range(cg):
                forward_consts(mean[r], invstd[r], w[g * cg + j], b[g * cg + j], hc, ac, cc, j)
            _group_affine(x, out, r, S, hc, ac, cc)


@kernel
def group_backward(dy, x, cg, mean, invstd, w, like, out, t1, t2):
    """Input gradient of `group_forward` with batch statistics, row by row in cache; t1, t2 (N*C,)
    get sum(dy) and sum(dy * (x - mean)) per (sample, channel)."""
    R, M = x.shape[1], x.shape[2]
    S = M // cg
    C = w.shape[0]
    G = C // cg
    for r in prange(R):
        hc = np.empty(cg, like.dtype)
        kc = np.empty(cg, like.dtype)
        ac = np.empty(cg, like.dtype)
        cc = np.empty(cg, like.dtype)
        n = r // G
        c0 = (r % G) * cg
        sg = 0.0
        hg = 0.0
        for j in range(cg):
            a1, a2 = _seg_grad_sums(dy, x, r, j * S, (j + 1) * S, mean[r])
            t1[n * C + c0 + j] = a1
            t2[n * C + c0 + j] = a2
            sg += w[c0 + j] * a1
            hg += w[c0 + j] * a2
        for j in range(cg):
            _group_bconsts(mean[r], invstd[r], w[c0 + j], sg, hg, np.float64(M), hc, kc, ac, cc, j)
        _group_elemt(dy, x, out, r, S, hc, kc, ac, cc)


# ---------------------------------------------------------------- LayerNorm
@strict
def _ln_affine(x, out, r, hv, av, cv, w, b):
    xs = x[0, r]
    os_ = out[0, r]
    for d in range(xs.shape[0]):
        os_[d] = store(((load(xs[d]) - hv) * av + cv) * w[d] + b[d], out)


@kernel
def layer_forward(x, w, b, eps, like, out, mean, var, invstd, poor):
    """Rows x (1, R, D); w, b (D,) in the working dtype (ones/zeros when absent). Fused per row:
    statistics about the row's first value, then y = ((x - hw) * aw + cw) * w + b."""
    R, D = x.shape[1], x.shape[2]
    for r in prange(R):
        hc = np.empty(1, like.dtype)
        ac = np.empty(1, like.dtype)
        cc = np.empty(1, like.dtype)
        k = np.float64(load(x[0, r, 0]))
        s1, s2 = _chan_sums(x, r, k)
        mean[r], var[r], invstd[r], bad = stats(np.float64(D), s1, s2, k, eps)
        poor[r] = bad
        if not bad:
            forward_consts(mean[r], invstd[r], 1.0, 0.0, hc, ac, cc, 0)
            _ln_affine(x, out, r, hc[0], ac[0], cc[0], w, b)


@helper
def _ln_row_sums(ds, xs, ws, hv):
    """(sum(gy), sum(gy * (x - hv))) of one row piece in the working dtype, gy = dy * w."""
    g = to_work(0.0, ws)
    h = to_work(0.0, ws)
    for d in range(xs.shape[0]):
        gy = load(ds[d]) * ws[d]
        g += gy
        h += gy * (load(xs[d]) - hv)
    return g, h


@helper
def _ln_tile_sums(dy, x, d0, d1, hi, xc, w, rows, gp, hp, dw, db, acc):
    """For columns [d0, d1): dw, db (float64, tile-local) and each row's partial sums gp[r] of
    gy = dy * w and hp[r] of gy * (x - hi[r]). In the working dtype (hi: the rows' means rounded to
    it; xc[:, r] = (invstd, (mean - hi) * invstd) of row r; w the weight; `acc` (2, d1 - d0)
    scratch): a row's sums over the tile, and the column sums over `rows` rows (a multiple of 4),
    are added in float64, as the numpy kernels do. Four rows at a time: the column sums are
    read and written once per four rows (that read-modify-write, not memory, bounds this pass)."""
    T = d1 - d0
    aw = acc[0, :T]
    ab = acc[1, :T]
    aw[:] = 0.0
    ab[:] = 0.0
    dw[:] = 0.0
    db[:] = 0.0
    R = x.shape[1]
    ws = w[d0:d1]
    for r in range(0, R, 4):
        if r + 4 <= R:
            x0, x1, x2, x3 = x[0, r, d0:d1], x[0, r + 1, d0:d1], x[0, r + 2, d0:d1], x[0, r + 3, d0:d1]
            e0, e1, e2, e3 = dy[0, r, d0:d1], dy[0, r + 1, d0:d1], dy[0, r + 2, d0:d1], dy[0, r + 3, d0:d1]
            h0, h1, h2, h3 = hi[r], hi[r + 1], hi[r + 2], hi[r + 3]
            i0, i1, i2, i3 = xc[0, r], xc[0, r + 1], xc[0, r + 2], xc[0, r + 3]
            c0, c1, c2, c3 = xc[1, r], xc[1, r + 1], xc[1, r + 2], xc[1, r + 3]
            g0 = g1 = g2 = g3 = to_work(0.0, ws)
            s0 = s1 = s2 = s3 = to_work(0.0, ws)
            for d in range(T):
                f0, f1, f2, f3 = load(e0[d]), load(e1[d]), load(e2[d]), load(e3[d])
                m0, m1, m2, m3 = load(x0[d]) - h0, load(x1[d]) - h1, load(x2[d]) - h2, load(x3[d]) - h3
                wd = ws[d]
                g0 += f0 * wd
                g1 += f1 * wd
                g2 += f2 * wd
                g3 += f3 * wd
                s0 += f0 * wd * m0
                s1 += f1 * wd * m1
                s2 += f2 * wd * m2
                s3 += f3 * wd * m3
                ab[d] += (f0 + f1) + (f2 + f3)
                aw[d] += ((f0 * (m0 * i0 - c0) + f1 * (m1 * i1 - c1))
                          + (f2 * (m2 * i2 - c2) + f3 * (m3 * i3 - c3)))
            gp[r], gp[r + 1], gp[r + 2], gp[r + 3] = g0, g1, g2, g3
            hp[r], hp[r + 1], hp[r + 2], hp[r + 3] = s0, s1, s2, s3
            top = r + 4
        else:
            for q in range(r, R):
                xs, es = x[0, q, d0:d1], dy[0, q, d0:d1]
                hv, iv, cv = hi[q], xc[0, q], xc[1, q]
                for d in range(T):
                    f = load(es[d])
                    ab[d] += f
                    aw[d] += f * ((load(xs[d]) - hv) * iv - cv)
            for q in range(r, R):
                g, h = _ln_row_sums(dy[0, q, d0:d1], x[0, q, d0:d1], ws, hi[q])
                gp[q] = np.float64(g)
                hp[q] = np.float64(h)
            top = R
        if top % rows == 0 or top == R:
            for d in range(T):
                dw[d] += np.float64(aw[d])
                db[d] += np.float64(ab[d])
            aw[:] = 0.0
            ab[:] = 0.0


@kernel
def layer_backward_sums(dy, x, hi, xc, w, tile, rows, gp, hp, dweight, dbias):
    """First pass of the LayerNorm backward: gp, hp (ntiles, R) partial row sums about hi;
    dweight, dbias (D,) float64 column sums. hi (R,), xc (2, R), w (D,): the working dtype."""
    D = x.shape[2]
    for i in prange((D + tile - 1) // tile):
        d0 = i * tile
        d1 = min(D, d0 + tile)
        acc = np.empty((2, tile), xc.dtype)
        _ln_tile_sums(dy, x, d0, d1, hi, xc, w, rows, gp[i], hp[i], dweight[d0:d1],
                      dbias[d0:d1], acc)


@strict
def _ln_elemt(dy, x, out, r, hv, kv, av, cv, w):
    xs = x[0, r]
    ds = dy[0, r]
    os_ = out[0, r]
    for d in range(xs.shape[0]):
        os_[d] = store((load(ds[d]) * w[d] + (load(xs[d]) - hv) * av + cv) * kv, out)


@strict
def _ln_bconsts(mean, invstd, g, h, D, hc, kc, ac, cc):
    a = -invstd * invstd * h / D
    hc[0] = mean
    lo = mean - np.float64(hc[0])
    cc[0] = -g / D - lo * a
    ac[0] = a
    kc[0] = invstd


@kernel
def layer_backward_dx(dy, x, mean, invstd, gp, hp, w, like, out):
    """Second pass: dx = invstd * (gy + (x - mean) * a + c) row by row; w (D,) working dtype."""
    R, D = x.shape[1], x.shape[2]
    for r in prange(R):
        g = 0.0
        h = 0.0
        for i in range(gp.shape[0]):
            g += gp[i, r]
            h += hp[i, r]
        h -= (mean[r] - np.float64(to_work(mean[r], like))) * g  # about the mean, not hi
        hc = np.empty(1, like.dtype)
        kc = np.empty(1, like.dtype)
        ac = np.empty(1, like.dtype)
        cc = np.empty(1, like.dtype)
        _ln_bconsts(mean[r], invstd[r], g, h, np.float64(D), hc, kc, ac, cc)
        _ln_elemt(dy, x, out, r, hc[0], kc[0], ac[0], cc[0], w)
