"""Compiled loops of LocalResponseNorm across channels (see `functional.lrn` for the formulas),
on contiguous (N, C, S) arrays, float64 throughout like the numpy kernels.

One sample at a time (threads share out samples), over blocks of LRN_BLOCK positions that hold all
C channels in cache: the squares, each channel's window sum (the window's channels added in
ascending order, as `lrn.window_sum` adds them, never as a difference of prefix sums), then
D^-beta. Only the powers with an exact short form are compiled (`SHORT_POWERS`: beta = 0.5, 0.75
and 1, torch's default being 0.75): square roots and a division vectorize, a general power is a
call to the C library per value, slower than numpy's vectorized power, so other betas run the
numpy kernel.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, kernel, load, store

#: positions per block (the block's C x LRN_BLOCK float64 arrays stay in the L2 cache)
LRN_BLOCK = 64
#: beta -> the code of its short form in `_neg_power`
SHORT_POWERS = {0.5: 1, 0.75: 2, 1.0: 3}


@helper
def _neg_power(d, mode):
    """d ** -beta for mode 1 (beta 0.5), 2 (0.75), 3 (1.0); NaN for d < 0, inf for d = 0, as
    numpy's power gives."""
    if mode == 1:
        return 1.0 / np.sqrt(d)
    if mode == 2:
        s = np.sqrt(d)
        return 1.0 / (s * np.sqrt(s))
    return 1.0 / d


@helper
def _window_sum(v, c, before, after, B, out):
    """out[:B] = sum of v[j, :B] for channels j in [c - before, c + after] within the C rows of v,
    added in ascending order from 0 (as `lrn.window_sum` adds them)."""
    for m in range(B):
        out[m] = 0.0
    for j in range(max(0, c - before), min(v.shape[0] - 1, c + after) + 1):
        src = v[j]
        for m in range(B):
            out[m] += src[m]


@helper
def _denominators(x, n, s0, B, before, after, scale, k, sq, dd):
    """dd[c, :B] = k + scale * (sum of x^2 over channels c - before .. c + after) at positions
    s0 .. s0 + B of sample n (sq: scratch (C, LRN_BLOCK))."""
    C = x.shape[1]
    for c in range(C):
        xs = x[n, c, s0:s0 + B]
        for m in range(B):
            v = np.float64(load(xs[m]))
            sq[c, m] = v * v
    for c in range(C):
        row = dd[c]
        _window_sum(sq, c, before, after, B, row)
        for m in range(B):
            row[m] = row[m] * scale + k


@kernel
def lrn_forward(x, size, alpha, k, mode, out):
    """out = x * D^-beta for x (N, C, S); beta given by `mode` (see SHORT_POWERS)."""
    N, C, S = x.shape
    scale = alpha / size
    for n in prange(N):
        sq = np.empty((C, LRN_BLOCK))
        dd = np.empty((C, LRN_BLOCK))
        for s0 in range(0, S, LRN_BLOCK):
            B = min(S, s0 + LRN_BLOCK) - s0
            _denominators(x, n, s0, B, size // 2, (size - 1) // 2, scale, k, sq, dd)
            for c in range(C):
                xs = x[n, c, s0:s0 + B]
                os_ = out[n, c, s0:s0 + B]
                for m in range(B):
                    os_[m] = store(np.float64(load(xs[m])) * _neg_power(dd[c, m], mode), out)


@kernel
def lrn_backward(dy, x, size, alpha, beta, k, mode, out):
    """out = dy * D^-beta - (2 alpha beta / size) * x * sum over the transposed window of
    dy * x * D^(-beta - 1), for x, dy (N, C, S)."""
    N, C, S = x.shape
    scale = alpha / size
    coef = 2.0 * alpha * beta / size
    before, after = (size - 1) // 2, size // 2  # the transposed window
    for n in prange(N):
        sq = np.empty((C, LRN_BLOCK))
        dd = np.empty((C, LRN_BLOCK))
        t = np.empty((C, LRN_BLOCK))
        u = np.empty(LRN_BLOCK)
        for s0 in range(0, S, LRN_BLOCK):
            B = min(S, s0 + LRN_BLOCK) - s0
            _denominators(x, n, s0, B, size // 2, (size - 1) // 2, scale, k, sq, dd)
            for c in range(C):
                xs = x[n, c, s0:s0 + B]
                ds = dy[n, c, s0:s0 + B]
                for m in range(B):
                    d = dd[c, m]
                    p = _neg_power(d, mode)
                    t[c, m] = np.float64(load(ds[m])) * np.float64(load(xs[m])) * p / d
                    dd[c, m] = p  # D^-beta from here on
            for j in range(C):
                _window_sum(t, j, before, after, B, u)
                xs = x[n, j, s0:s0 + B]
                ds = dy[n, j, s0:s0 + B]
                os_ = out[n, j, s0:s0 + B]
                for m in range(B):
                    v = dd[j, m] * np.float64(load(ds[m])) - u[m] * np.float64(load(xs[m])) * coef
                    os_[m] = store(v, out)
