"""Short rows: the BatchNorm kernels for (A, C, M) views with M < MIN_ROW.

BatchNorm1d on (N, C) input (M = 1), small spatial maps and channels-last tensors have rows too short
for the row kernels. Here the view is (A, C*M): every column holds one channel's values at one
position, and the passes go over blocks of whole rows of that view that stay in cache. Column sums
are BLAS matrix-vector products (ones @ block) in the working dtype over at most a block of rows,
combined in float64 across blocks; the statistics are centred per block and column first, as in
`moments`, so they are exact whatever the mean.
"""
from __future__ import annotations

import numpy as np

from .blocks import COL_BLOCK, work_dtype

__all__ = ["col_moments", "col_affine", "col_backward_reduce"]

_F64 = np.dtype(np.float64)


def _blocks(A: int, CM: int) -> list[tuple[int, int]]:
    step = max(1, COL_BLOCK // max(1, CM))
    return [(a0, min(A, a0 + step)) for a0 in range(0, A, step)]


def _cols(x3: np.ndarray) -> np.ndarray:
    """(A, C*M), C-contiguous (a strided input is copied once, so that BLAS sees the same layout
    and rounds the same way as for a contiguous input)."""
    A, C, M = x3.shape
    return np.ascontiguousarray(x3.reshape(A, C * M))


def col_moments(x3: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shifted sums (S1, S2) per channel of x3 (A, C, M) about `shift` (C,), float64."""
    A, C, M = x3.shape
    CM = C * M
    X, wd = _cols(x3), work_dtype(x3.dtype)
    blocks = _blocks(A, CM)
    step = blocks[0][1] - blocks[0][0]
    ones = np.ones(step, wd)
    t = np.empty((step, CM), wd)
    mb = np.empty((len(blocks), CM), wd)  # per block and column: rounded mean, sum(x - m), sum((x - m)^2)
    t1 = np.empty((len(blocks), CM), wd)
    t2 = np.empty((len(blocks), CM), wd)
    r = np.empty((len(blocks), 1))
    for i, (a0, a1) in enumerate(blocks):
        n = a1 - a0
        o, tb = ones[:n], t[:n]
        blk = X[a0:a1]
        np.matmul(o, blk.astype(wd, copy=False), out=mb[i])
        mb[i] /= n
        np.subtract(blk, mb[i], out=tb, dtype=wd)  # centred on the block's column means: exact
        np.matmul(o, tb, out=t1[i])
        tb *= tb
        np.matmul(o, tb, out=t2[i])
        r[i] = n
    d = mb.astype(_F64) - np.repeat(shift, M)
    T1 = t1.astype(_F64)
    s1 = (T1 + r * d).sum(axis=0)
    s2 = (t2.astype(_F64) + d * (2 * T1 + r * d)).sum(axis=0)
    return s1.reshape(C, M).sum(axis=1), s2.reshape(C, M).sum(axis=1)


def col_backward_reduce(dy3: np.ndarray, x3: np.ndarray, hi: np.ndarray,
                        lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum(dy), sum(dy * (x - mean))) per channel with mean = hi + lo (hi in the working dtype)."""
    A, C, M = x3.shape
    CM = C * M
    X, DY, wd = _cols(x3), _cols(dy3), work_dtype(x3.dtype)
    Hc = np.repeat(hi.astype(wd), M)
    blocks = _blocks(A, CM)
    step = blocks[0][1] - blocks[0][0]
    ones = np.ones(step, wd)
    t = np.empty((step, CM), wd)
    g = np.empty((len(blocks), CM), wd)
    e = np.empty((len(blocks), CM), wd)
    for i, (a0, a1) in enumerate(blocks):
        o, tb = ones[:a1 - a0], t[:a1 - a0]
        d = DY[a0:a1].astype(wd, copy=False)
        np.matmul(o, d, out=g[i])
        np.subtract(X[a0:a1], Hc, out=tb, dtype=wd)
        tb *= d
        np.matmul(o, tb, out=e[i])
    G = g.astype(_F64).sum(axis=0).reshape(C, M).sum(axis=1)
    H = e.astype(_F64).sum(axis=0).reshape(C, M).sum(axis=1)
    return G, H - lo * G


def col_affine(out3: np.ndarray, x3: np.ndarray, hi: np.ndarray, a: np.ndarray, c: np.ndarray,
               fold: bool, dy3: np.ndarray | None = None, k: np.ndarray | None = None) -> None:
    """out = (x - hi) * a + c [+ dy * k] per channel (float64 constants (C,), `c` already folded
    when `fold`: then out = x * a + c)."""
    A, C, M = x3.shape
    wd = work_dtype(x3.dtype)
    if not out3.flags.c_contiguous:  # reshape would copy: fill a contiguous array, then copy back
        tmp_out = np.empty(out3.shape, out3.dtype)
        col_affine(tmp_out, x3, hi, a, c, fold, dy3, k)
        out3[...] = tmp_out
        return
    X, O = _cols(x3), out3.reshape(A, C * M)
    Hc, Ac, Cc = (np.repeat(v.astype(wd), M) for v in (hi, a, c))
    DY = _cols(dy3) if dy3 is not None else None
    Kc = np.repeat(k.astype(wd), M) if k is not None else None
    direct = O.dtype == wd
    tmp = None
    for a0, a1 in _blocks(A, C * M):
        xs = X[a0:a1]
        o = O[a0:a1] if direct else np.empty(xs.shape, wd)
        if fold:
            np.multiply(xs, Ac, out=o, dtype=wd)
        else:
            np.subtract(xs, Hc, out=o, dtype=wd)
            o *= Ac
        o += Cc
        if DY is not None:
            if tmp is None or tmp.shape != o.shape:
                tmp = np.empty(o.shape, wd)
            np.multiply(DY[a0:a1], Kc, out=tmp, dtype=wd)
            o += tmp
        if not direct:
            O[a0:a1] = o
